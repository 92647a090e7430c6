//! ilanet's BGP speaker.
//!
//! * [`evpn`] — L2VPN EVPN route types (RFC 7432 / RFC 8365);
//! * [`codec`] — framing and RFC 7606 error handling over netgauze's wire codec;
//! * [`message`] — the small message types the state machine works with;
//! * [`fsm`] — the sans-I/O session state machine (RFC 4271 §8) with an injected clock;
//! * [`rib`] — Adj-RIB-In with graceful-restart stale flags, Loc-RIB best path;
//! * [`speaker`] — the thin tokio layer: a [`speaker::Speaker`] owning N peers.
//!
//! Families: IPv6 unicast and L2VPN EVPN ([`message::Family`]), negotiated per session.
#![doc = include_str!("../README.md")]

pub mod codec;
pub mod evpn;
pub mod fsm;
pub mod message;
pub mod rib;
pub mod speaker;

pub use evpn::{
    BestEvpnRoute, EvpnChange, EvpnNlri, EvpnRoute, Mac, RouteDistinguisher, RouteTarget,
};
pub use fsm::{resolve_collision, Collision, Input, Output, Session, SessionConfig, State};
pub use message::{Family, Message, Notification};
pub use rib::{BestChange, BestRoute};
pub use speaker::{PeerConfig, SocketFactory, Speaker, SpeakerConfig, SpeakerStatus};
