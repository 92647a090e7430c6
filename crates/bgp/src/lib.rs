//! ilanet's BGP speaker.
//!
//! * [`codec`] — framing and RFC 7606 error handling over netgauze's wire codec;
//! * [`message`] — the small message types the state machine works with;
//! * [`fsm`] — the sans-I/O session state machine (RFC 4271 §8) with an injected clock;
//! * [`rib`] — Adj-RIB-In with graceful-restart stale flags, Loc-RIB best path;
//! * [`speaker`] — the thin tokio layer: a [`speaker::Speaker`] owning N peers.
//!
//! Only IPv6 unicast is implemented; [`message::Family`] is the place to add L2VPN EVPN.
#![doc = include_str!("../README.md")]

pub mod codec;
pub mod fsm;
pub mod message;
pub mod rib;
pub mod speaker;

pub use fsm::{resolve_collision, Collision, Input, Output, Session, SessionConfig, State};
pub use message::{Family, Message, Notification};
pub use rib::{BestChange, BestRoute};
pub use speaker::{PeerConfig, SocketFactory, Speaker, SpeakerConfig, SpeakerStatus};
