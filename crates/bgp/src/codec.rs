//! Framing and the mapping between ilanet's message types and netgauze's wire codec.
//!
//! netgauze encodes and decodes every message and path attribute. This module adds what a
//! speaker needs around it: header checks that name the right NOTIFICATION (RFC 4271 §6.1),
//! and RFC 7606 revised error handling. For the latter the attribute list is split into its
//! (flags, type, length) records here, and each record is handed to netgauze on its own, so
//! that a malformed attribute can be judged by its type code: treat-as-withdraw, attribute
//! discard, or session reset.

use crate::evpn::{EvpnNlri, EvpnRoute, RouteDistinguisher, RouteTarget, MAX_VNI};
use crate::message::{
    AsSegment, Capabilities, Family, GracefulRestart, Message, Notification, Open, Origin,
    PathAttributes, Reach, Update,
};
use ipnet::Ipv6Net;
use netgauze_bgp_pkt::capabilities::{
    BgpCapability, FourOctetAsCapability, GracefulRestartAddressFamily, GracefulRestartCapability,
    MultiProtocolExtensionsCapability,
};
use netgauze_bgp_pkt::community::{
    EvpnExtendedCommunity, ExtendedCommunity, TransitiveFourOctetExtendedCommunity,
    TransitiveOpaqueExtendedCommunity, TransitiveTwoOctetExtendedCommunity,
};
use netgauze_bgp_pkt::iana::RouteRefreshSubcode;
use netgauze_bgp_pkt::nlri::{
    EthernetSegmentIdentifier, EthernetTag, InclusiveMulticastEthernetTagRoute, Ipv6Unicast,
    Ipv6UnicastAddress, L2EvpnAddress, L2EvpnRoute, MacAddress, MacIpAdvertisement, MplsLabel,
    RouteDistinguisher as NgRd,
};
use netgauze_bgp_pkt::notification::{
    BgpNotificationMessage as NgNotification, CeaseError, FiniteStateMachineError,
    HoldTimerExpiredError, MessageHeaderError, OpenMessageError, RouteRefreshError,
    UpdateMessageError,
};
use netgauze_bgp_pkt::open::{BgpOpenMessage, BgpOpenMessageParameter};
use netgauze_bgp_pkt::path_attribute::{
    As4PathSegment, AsPath, AsPathSegmentType, ExtendedCommunities, LocalPreference, MpReach,
    MpUnreach, MultiExitDiscriminator, Origin as NgOrigin, PathAttribute, PathAttributeValue,
    UnknownAttribute,
};
use netgauze_bgp_pkt::route_refresh::BgpRouteRefreshMessage;
use netgauze_bgp_pkt::update::BgpUpdateMessage;
use netgauze_bgp_pkt::wire::deserializer::BgpParsingContext;
use netgauze_bgp_pkt::BgpMessage;
use netgauze_iana::address_family::AddressType;
use netgauze_parse_utils::reader::SliceReader;
use netgauze_parse_utils::traits::{ParseFrom, ParseFromWithOneInput};
use netgauze_parse_utils::WritablePdu;
use std::collections::HashMap;

/// Size of the fixed BGP header.
pub const HEADER_LEN: usize = 19;
/// Largest message without the extended-message capability (RFC 4271 §4.1), which we never
/// advertise, so also the bound of a peer's read buffer.
pub const MAX_MESSAGE_LEN: usize = 4096;
/// Prefixes per UPDATE we send: 200 × 17 bytes stays well below [`MAX_MESSAGE_LEN`].
const PREFIXES_PER_UPDATE: usize = 200;
/// EVPN NLRI per withdrawing UPDATE: 60 × 54 bytes (the largest type 2) stays below it too.
const EVPN_PER_UPDATE: usize = 60;
/// PMSI_TUNNEL attribute (RFC 6514 §5), which netgauze keeps as an unknown attribute.
const PMSI_TUNNEL: u8 = 22;
/// PMSI tunnel type ingress replication (RFC 6514 §5).
const PMSI_INGRESS_REPLICATION: u8 = 6;
/// Transitive opaque extended community sub-type "encapsulation" (RFC 9012 §4.1).
const ENCAPSULATION_SUBTYPE: u8 = 0x0c;
/// Tunnel type VXLAN (RFC 8365 §5.1.3).
const TUNNEL_VXLAN: u16 = 8;

/// A received message that must end the session: the NOTIFICATION to send and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} → {notification}")]
pub struct DecodeError {
    /// What to send the peer.
    pub notification: Notification,
    /// What was wrong, naming the field.
    pub reason: String,
}

fn fatal(
    code: u8,
    subcode: u8,
    data: impl Into<Vec<u8>>,
    reason: impl Into<String>,
) -> DecodeError {
    DecodeError {
        notification: Notification::with_data(code, subcode, data),
        reason: reason.into(),
    }
}

/// Could not encode a message (our own data out of range; never the peer's input).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("encoding BGP {what}: {detail}")]
pub struct EncodeError {
    what: &'static str,
    detail: String,
}

/// What RFC 7606 handling did to one UPDATE, for the log and the peer's status.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpdateReport {
    /// Set when the UPDATE's announcements were turned into withdrawals, with why.
    pub treat_as_withdraw: Option<String>,
    /// Attributes discarded (type code, why).
    pub discarded: Vec<(u8, String)>,
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The message, or `None` when it is to be ignored (e.g. a ROUTE-REFRESH for a family we
    /// never negotiated).
    pub message: Option<Message>,
    /// RFC 7606 outcome (UPDATE only).
    pub report: UpdateReport,
}

/// Checks the header at the start of `buf` and returns the length of the first message once it
/// is complete (`Ok(None)`: more bytes needed). The marker is checked as soon as its bytes
/// arrive so that garbage is refused before a whole frame is buffered.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    let marker = &buf[..buf.len().min(16)];
    if marker.iter().any(|&b| b != 0xff) {
        return Err(fatal(1, 1, [], "header marker is not all ones"));
    }
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len_field = [buf[16], buf[17]];
    let len = u16::from_be_bytes(len_field) as usize;
    let kind = buf[18];
    let min = match kind {
        1 => 29,
        2 => 23,
        3 => 21,
        4 => 19,
        5 => 23,
        other => {
            return Err(fatal(
                1,
                3,
                [other],
                format!("header type {other} is undefined"),
            ))
        }
    };
    let fixed = matches!(kind, 4 | 5);
    if len < min || len > MAX_MESSAGE_LEN || (fixed && len != min) {
        return Err(fatal(
            1,
            2,
            len_field,
            format!("header length {len} is invalid for message type {kind}"),
        ));
    }
    Ok((buf.len() >= len).then_some(len))
}

fn parsing_context() -> BgpParsingContext {
    // 4-octet AS always: we refuse peers without the capability (see fsm), so every AS_PATH we
    // accept is in 4-octet form. Unknown capabilities are ignored, not fatal (RFC 5492 §3).
    BgpParsingContext::new(
        true,
        HashMap::new(),
        HashMap::new(),
        true,
        true,
        false,
        true,
    )
}

/// Decodes one complete frame (as delimited by [`frame_len`]). Never panics.
pub fn decode(frame: &[u8]) -> Result<Decoded, DecodeError> {
    let len = match frame_len(frame)? {
        Some(len) if len == frame.len() => len,
        _ => return Err(fatal(1, 2, [], "frame is not exactly one message")),
    };
    let kind = frame[18];
    let body = &frame[HEADER_LEN..len];
    let mut report = UpdateReport::default();
    let message = match kind {
        2 => Some(Message::Update(decode_update(body, &mut report)?)),
        3 => Some(Message::Notification(decode_notification(body))),
        _ => {
            let mut ctx = parsing_context();
            let mut cur = SliceReader::new(frame);
            match BgpMessage::parse(&mut cur, &mut ctx) {
                Ok(BgpMessage::Open(open)) => Some(Message::Open(from_ng_open(&open))),
                Ok(BgpMessage::KeepAlive) => Some(Message::Keepalive),
                Ok(BgpMessage::RouteRefresh(rr)) => family_of(rr.address_type())
                    .filter(|_| rr.operation_type() == RouteRefreshSubcode::NormalRequest)
                    .map(Message::RouteRefresh),
                Ok(_) => return Err(fatal(1, 3, [kind], "message type mismatch")),
                Err(e) => return Err(open_error(kind, body, &e)),
            }
        }
    };
    Ok(Decoded { message, report })
}

fn open_error(
    kind: u8,
    body: &[u8],
    e: &netgauze_bgp_pkt::wire::deserializer::BgpMessageParsingError,
) -> DecodeError {
    use netgauze_bgp_pkt::wire::deserializer::open::BgpOpenMessageParsingError as O;
    use netgauze_bgp_pkt::wire::deserializer::BgpMessageParsingError as M;
    let reason = e.to_string();
    match e {
        M::BgpOpenMessageParsingError(O::UnsupportedVersionNumber { .. }) => {
            // Data: the largest version we support (RFC 4271 §6.2).
            fatal(2, 1, 4u16.to_be_bytes(), reason)
        }
        M::BgpOpenMessageParsingError(O::UnacceptableHoldTime { .. }) => fatal(2, 6, [], reason),
        M::BgpOpenMessageParsingError(O::InvalidBgpId { .. }) => fatal(2, 3, [], reason),
        M::BgpOpenMessageParsingError(O::ParameterError(_)) => fatal(2, 4, [], reason),
        M::BgpOpenMessageParsingError(_) => fatal(2, 0, [], reason),
        M::BgpRouteRefreshMessageParsingError(_) => {
            // RFC 7313 §5: invalid length → Route-Refresh error, data = the message.
            let mut data = Vec::with_capacity(body.len() + HEADER_LEN);
            data.extend_from_slice(body);
            fatal(7, 1, data, reason)
        }
        _ if kind == 1 => fatal(2, 0, [], reason),
        _ => fatal(1, 0, [], reason),
    }
}

fn family_of(at: AddressType) -> Option<Family> {
    match at {
        AddressType::Ipv6Unicast => Some(Family::Ipv6Unicast),
        AddressType::L2VpnBgpEvpn => Some(Family::L2vpnEvpn),
        _ => None,
    }
}

fn from_ng_open(open: &BgpOpenMessage) -> Open {
    let mut caps = Capabilities::default();
    for cap in open.capabilities() {
        match cap {
            BgpCapability::MultiProtocolExtensions(mp) => {
                if let Some(f) = family_of(mp.address_type()) {
                    if !caps.families.contains(&f) {
                        caps.families.push(f);
                    }
                }
            }
            BgpCapability::FourOctetAs(a) => caps.four_octet_as = Some(a.asn4()),
            BgpCapability::RouteRefresh | BgpCapability::EnhancedRouteRefresh => {
                caps.route_refresh = true
            }
            BgpCapability::GracefulRestartCapability(gr) => {
                caps.graceful_restart = Some(GracefulRestart {
                    restarting: gr.restart(),
                    restart_time: gr.time(),
                    families: gr
                        .address_families()
                        .iter()
                        .filter_map(|af| {
                            Some((family_of(af.address_type())?, af.forwarding_state()))
                        })
                        .collect(),
                })
            }
            _ => {}
        }
    }
    Open {
        asn: caps.four_octet_as.unwrap_or(open.my_as() as u32),
        hold_time: open.hold_time(),
        router_id: open.bgp_id(),
        capabilities: caps,
    }
}

fn decode_notification(body: &[u8]) -> Notification {
    // A NOTIFICATION ends the session whatever it says and is never answered (RFC 4271 §6.4),
    // so netgauze validates it and, where it refuses an unknown subcode, the raw triple is kept.
    let raw = Notification::with_data(
        body.first().copied().unwrap_or(0),
        body.get(1).copied().unwrap_or(0),
        body.get(2..).unwrap_or(&[]),
    );
    let mut cur = SliceReader::new(body);
    match NgNotification::parse(&mut cur) {
        Ok(n) => from_ng_notification(&n).unwrap_or(raw),
        Err(_) => raw,
    }
}

fn from_ng_notification(n: &NgNotification) -> Option<Notification> {
    let mut out = Vec::new();
    n.write(&mut out).ok()?;
    Some(Notification::with_data(
        *out.first()?,
        *out.get(1)?,
        out.get(2..).unwrap_or(&[]),
    ))
}

/// netgauze's enum for a (code, subcode, data) triple; `None` for codes it has no name for.
fn to_ng_notification(n: &Notification) -> Option<NgNotification> {
    let value: Box<[u8]> = n.data.clone().into();
    Some(match n.code {
        1 => NgNotification::MessageHeaderError(match n.subcode {
            0 => MessageHeaderError::Unspecific { value },
            1 => MessageHeaderError::ConnectionNotSynchronized { value },
            2 => MessageHeaderError::BadMessageLength { value },
            3 => MessageHeaderError::BadMessageType { value },
            _ => return None,
        }),
        2 => NgNotification::OpenMessageError(match n.subcode {
            0 => OpenMessageError::Unspecific { value },
            1 => OpenMessageError::UnsupportedVersionNumber { value },
            2 => OpenMessageError::BadPeerAs { value },
            3 => OpenMessageError::BadBgpIdentifier { value },
            4 => OpenMessageError::UnsupportedOptionalParameter { value },
            6 => OpenMessageError::UnacceptableHoldTime { value },
            7 => OpenMessageError::UnsupportedCapability { value },
            _ => return None,
        }),
        3 => NgNotification::UpdateMessageError(match n.subcode {
            0 => UpdateMessageError::Unspecific { value },
            1 => UpdateMessageError::MalformedAttributeList { value },
            2 => UpdateMessageError::UnrecognizedWellKnownAttribute { value },
            3 => UpdateMessageError::MissingWellKnownAttribute { value },
            4 => UpdateMessageError::AttributeFlagsError { value },
            5 => UpdateMessageError::AttributeLengthError { value },
            6 => UpdateMessageError::InvalidOriginAttribute { value },
            8 => UpdateMessageError::InvalidNextHopAttribute { value },
            9 => UpdateMessageError::OptionalAttributeError { value },
            10 => UpdateMessageError::InvalidNetworkField { value },
            11 => UpdateMessageError::MalformedAsPath { value },
            _ => return None,
        }),
        4 => NgNotification::HoldTimerExpiredError(HoldTimerExpiredError::Unspecific {
            sub_code: n.subcode,
            value,
        }),
        5 => NgNotification::FiniteStateMachineError(match n.subcode {
            0 => FiniteStateMachineError::Unspecific { value },
            1 => FiniteStateMachineError::ReceiveUnexpectedMessageInOpenSentState { value },
            2 => FiniteStateMachineError::ReceiveUnexpectedMessageInOpenConfirmState { value },
            3 => FiniteStateMachineError::ReceiveUnexpectedMessageInEstablishedState { value },
            _ => return None,
        }),
        6 => NgNotification::CeaseError(match n.subcode {
            1 => CeaseError::MaximumNumberOfPrefixesReached { value },
            2 => CeaseError::AdministrativeShutdown { value },
            3 => CeaseError::PeerDeConfigured { value },
            4 => CeaseError::AdministrativeReset { value },
            5 => CeaseError::ConnectionRejected { value },
            6 => CeaseError::OtherConfigurationChange { value },
            7 => CeaseError::ConnectionCollisionResolution { value },
            8 => CeaseError::OutOfResources { value },
            9 => CeaseError::HardReset { value },
            10 => CeaseError::BfdDown { value },
            _ => return None,
        }),
        7 => NgNotification::RouteRefreshError(match n.subcode {
            1 => RouteRefreshError::InvalidMessageLength { value },
            _ => return None,
        }),
        _ => return None,
    })
}

// ---- UPDATE decoding with RFC 7606 ----

/// How RFC 7606 treats a malformed attribute of this type code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Severity {
    TreatAsWithdraw,
    Discard,
    Reset,
}

fn severity(code: u8) -> Severity {
    match code {
        // ORIGIN, AS_PATH, NEXT_HOP, MED, LOCAL_PREF (§7.1–7.5), COMMUNITIES (§7.8),
        // ORIGINATOR_ID, CLUSTER_LIST (§7.9, 7.10), EXTENDED COMMUNITIES (§7.14), LARGE
        // COMMUNITIES (RFC 8092 §6).
        1..=5 | 8..=10 | 16 | 25 | 32 => Severity::TreatAsWithdraw,
        // MP_REACH / MP_UNREACH: the NLRI cannot be located (§7.11): session reset.
        14 | 15 => Severity::Reset,
        // ATOMIC_AGGREGATE, AGGREGATOR, AS4_PATH, AS4_AGGREGATOR (§7.6, 7.7; RFC 6793 §6),
        // and any other optional attribute.
        _ => Severity::Discard,
    }
}

struct RawAttr<'a> {
    code: u8,
    /// The whole record (flags, type, length, value), as netgauze parses it.
    record: &'a [u8],
    /// Header length (3, or 4 with the extended-length flag).
    hdr: usize,
}

impl RawAttr<'_> {
    fn value(&self) -> &[u8] {
        &self.record[self.hdr..]
    }
}

/// Splits the attribute list into records; `Err` when a length overruns the list (RFC 7606
/// §4: then the NLRI cannot be located, so session reset with Malformed Attribute List).
fn split_attributes(mut list: &[u8]) -> Result<Vec<RawAttr<'_>>, DecodeError> {
    let mut out = Vec::new();
    while !list.is_empty() {
        let (flags, code) = match list {
            [f, c, ..] => (*f, *c),
            _ => return Err(fatal(3, 1, [], "path attribute header truncated")),
        };
        let extended = flags & 0x10 != 0;
        let (hdr, len) = if extended {
            match list.get(2..4) {
                Some(l) => (4, u16::from_be_bytes([l[0], l[1]]) as usize),
                None => {
                    return Err(fatal(
                        3,
                        1,
                        [],
                        format!("attribute {code}: length truncated"),
                    ))
                }
            }
        } else {
            match list.get(2) {
                Some(l) => (3, *l as usize),
                None => {
                    return Err(fatal(
                        3,
                        1,
                        [],
                        format!("attribute {code}: length truncated"),
                    ))
                }
            }
        };
        if list.len() < hdr + len {
            return Err(fatal(
                3,
                1,
                [],
                format!("attribute {code}: length {len} overruns the attribute list"),
            ));
        }
        out.push(RawAttr {
            code,
            record: &list[..hdr + len],
            hdr,
        });
        list = &list[hdr + len..];
    }
    Ok(out)
}

fn decode_update(body: &[u8], report: &mut UpdateReport) -> Result<Update, DecodeError> {
    let field = |at: usize| -> Option<usize> {
        Some(u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]) as usize)
    };
    let withdrawn_len = field(0).ok_or_else(|| fatal(3, 1, [], "withdrawn length truncated"))?;
    let attrs_at = 2 + withdrawn_len;
    let attrs_len = field(attrs_at).ok_or_else(|| {
        fatal(
            3,
            1,
            [],
            format!("withdrawn routes length {withdrawn_len} overruns the message"),
        )
    })?;
    let attrs = body
        .get(attrs_at + 2..attrs_at + 2 + attrs_len)
        .ok_or_else(|| {
            fatal(
                3,
                1,
                [],
                format!("total path attribute length {attrs_len} overruns the message"),
            )
        })?;
    // Legacy IPv4 withdrawn/NLRI fields: IPv4 unicast is never negotiated, so they are ignored
    // (RFC 4760 §7); their lengths were checked above.
    let records = split_attributes(attrs)?;

    let mut ctx = parsing_context();
    let mut seen = [false; 256];
    let mut origin = None;
    let mut as_path = None;
    let mut med = None;
    let mut local_pref = None;
    let mut reach: Option<Reach> = None;
    let mut unreach: Option<Vec<Ipv6Net>> = None;
    let mut evpn_reach: Option<EvpnReach> = None;
    let mut evpn_unreach: Option<Vec<EvpnNlri>> = None;
    let mut ext = EvpnAttrs::default();
    for rec in &records {
        if seen[rec.code as usize] {
            if matches!(rec.code, 14 | 15) {
                return Err(fatal(
                    3,
                    1,
                    [],
                    format!("attribute {} appears twice", rec.code),
                ));
            }
            // RFC 7606 §3(g): all but the first occurrence are discarded.
            report
                .discarded
                .push((rec.code, "duplicate attribute".to_string()));
            continue;
        }
        seen[rec.code as usize] = true;
        // EVPN MP_REACH / MP_UNREACH are split here, NLRI by NLRI, so that one malformed route
        // does not hide where the others are (RFC 7606 §5.3, §5.4).
        if matches!(rec.code, 14 | 15) && rec.value().get(..3) == Some(&[0, 25, 70]) {
            if rec.code == 14 {
                evpn_reach = Some(decode_evpn_reach(rec)?);
            } else {
                evpn_unreach = Some(decode_evpn_unreach(rec, report)?);
            }
            continue;
        }
        if rec.code == PMSI_TUNNEL {
            match decode_pmsi(rec.value()) {
                Ok(v) => ext.pmsi_vni = v,
                Err(why) => report.discarded.push((rec.code, why)),
            }
            continue;
        }
        let mut cur = SliceReader::new(rec.record);
        let parsed = PathAttribute::parse(&mut cur, &mut ctx);
        let parsed = match parsed {
            Ok(a) if cur.is_empty() => Ok(a),
            Ok(_) => Err(format!("attribute {}: trailing bytes", rec.code)),
            Err(e) => Err(format!("attribute {}: {e}", rec.code)),
        };
        let attr = match parsed {
            Ok(a) => a,
            Err(reason) => {
                match severity(rec.code) {
                    Severity::Reset => return Err(fatal(3, 9, rec.record.to_vec(), reason)),
                    Severity::TreatAsWithdraw => {
                        report.treat_as_withdraw.get_or_insert(reason);
                    }
                    Severity::Discard => report.discarded.push((rec.code, reason)),
                }
                continue;
            }
        };
        match attr.value() {
            PathAttributeValue::Origin(o) => {
                origin = Some(match o {
                    NgOrigin::IGP => Origin::Igp,
                    NgOrigin::EGP => Origin::Egp,
                    NgOrigin::Incomplete => Origin::Incomplete,
                })
            }
            PathAttributeValue::AsPath(AsPath::As4PathSegments(segs)) => {
                as_path = Some(
                    segs.iter()
                        .map(|s| match s.segment_type() {
                            AsPathSegmentType::AsSequence => {
                                AsSegment::Sequence(s.as_numbers().to_vec())
                            }
                            AsPathSegmentType::AsSet => AsSegment::Set(s.as_numbers().to_vec()),
                        })
                        .collect::<Vec<_>>(),
                )
            }
            PathAttributeValue::AsPath(AsPath::As2PathSegments(_)) => {
                report
                    .treat_as_withdraw
                    .get_or_insert("AS_PATH in 2-octet form on a 4-octet session".into());
            }
            PathAttributeValue::MultiExitDiscriminator(m) => med = Some(m.metric()),
            PathAttributeValue::LocalPreference(l) => local_pref = Some(l.metric()),
            PathAttributeValue::MpReach(MpReach::Ipv6Unicast {
                next_hop_global,
                next_hop_local,
                nlri,
            }) => {
                reach = Some(Reach {
                    next_hop: *next_hop_global,
                    next_hop_local: *next_hop_local,
                    prefixes: nlri.iter().map(|a| a.network().address()).collect(),
                })
            }
            PathAttributeValue::MpUnreach(MpUnreach::Ipv6Unicast { nlri }) => {
                unreach = Some(nlri.iter().map(|a| a.network().address()).collect())
            }
            PathAttributeValue::ExtendedCommunities(ec) => ext.read(ec.communities()),
            // Families we did not negotiate are ignored (RFC 4760 §7).
            PathAttributeValue::MpReach(_) => {}
            PathAttributeValue::MpUnreach(_) => {}
            _ => {
                if !attr.optional()
                    && matches!(attr.value(), PathAttributeValue::UnknownAttribute(_))
                {
                    // RFC 4271 §6.3, unchanged by RFC 7606.
                    return Err(fatal(
                        3,
                        2,
                        rec.record.to_vec(),
                        format!("unrecognized well-known attribute {}", rec.code),
                    ));
                }
            }
        }
    }

    let mut update = Update {
        withdrawn: unreach.clone().unwrap_or_default(),
        evpn_withdrawn: evpn_unreach.clone().unwrap_or_default(),
        ..Update::default()
    };
    // End-of-RIB: an UPDATE whose only attribute is an empty MP_UNREACH (RFC 4724 §2).
    if records.len() == 1 && unreach.as_ref().is_some_and(|u| u.is_empty()) {
        update.end_of_rib = Some(Family::Ipv6Unicast);
        return Ok(update);
    }
    if records.len() == 1 && evpn_unreach.as_ref().is_some_and(|u| u.is_empty()) {
        update.end_of_rib = Some(Family::L2vpnEvpn);
        return Ok(update);
    }
    if let Some(er) = evpn_reach {
        let mut why = report.treat_as_withdraw.clone().or(er.malformed);
        let nh = er.next_hop;
        if why.is_none() {
            why = match nh {
                None => Some("MP_REACH (EVPN) next hop length is not 4, 16 or 32".into()),
                Some(nh) if !unicast(nh) => Some(format!(
                    "MP_REACH (EVPN) next hop {nh} is not a unicast address"
                )),
                Some(_) => None,
            };
        }
        if why.is_none() && !er.routes.is_empty() && (origin.is_none() || as_path.is_none()) {
            why = Some("ORIGIN or AS_PATH missing from an UPDATE with NLRI".to_string());
        }
        match (why, nh) {
            (None, Some(nh)) => {
                let routes: Vec<EvpnRoute> = er
                    .routes
                    .into_iter()
                    .map(|nlri| ext.route(nlri, nh))
                    .collect();
                if !routes.is_empty() {
                    let attrs = PathAttributes {
                        origin: origin.unwrap_or(Origin::Incomplete),
                        as_path: as_path.clone().unwrap_or_default(),
                        med,
                        local_pref,
                    };
                    update.evpn_reach = Some((routes, attrs));
                }
            }
            (why, _) => {
                if report.treat_as_withdraw.is_none() {
                    report.treat_as_withdraw = why;
                }
                update.evpn_withdrawn.extend(er.routes);
            }
        }
    }
    if let Some(r) = reach {
        if r.prefixes.is_empty() {
            return Ok(update);
        }
        let nh = r.next_hop;
        if !unicast(nh.into()) && report.treat_as_withdraw.is_none() {
            report.treat_as_withdraw =
                Some(format!("MP_REACH next hop {nh} is not a unicast address"));
        }
        if report.treat_as_withdraw.is_none() && (origin.is_none() || as_path.is_none()) {
            // RFC 7606 §3(d): missing well-known mandatory attribute.
            report.treat_as_withdraw =
                Some("ORIGIN or AS_PATH missing from an UPDATE with NLRI".to_string());
        }
        if report.treat_as_withdraw.is_some() {
            update.withdrawn.extend(r.prefixes);
        } else {
            let attrs = PathAttributes {
                origin: origin.unwrap_or(Origin::Incomplete),
                as_path: as_path.unwrap_or_default(),
                med,
                local_pref,
            };
            update.reach = Some((r, attrs));
        }
    }
    Ok(update)
}

// ---- encoding ----

fn write(msg: &BgpMessage, what: &'static str) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(msg.len());
    msg.write(&mut out).map_err(|e| EncodeError {
        what,
        detail: e.to_string(),
    })?;
    if out.len() > MAX_MESSAGE_LEN {
        return Err(EncodeError {
            what,
            detail: format!("{} bytes exceeds {MAX_MESSAGE_LEN}", out.len()),
        });
    }
    Ok(out)
}

fn ng_family(f: Family) -> AddressType {
    match f {
        Family::Ipv6Unicast => AddressType::Ipv6Unicast,
        Family::L2vpnEvpn => AddressType::L2VpnBgpEvpn,
    }
}

/// Encodes an OPEN.
pub fn encode_open(open: &Open) -> Result<Vec<u8>, EncodeError> {
    let caps = &open.capabilities;
    let mut list = Vec::new();
    for f in &caps.families {
        list.push(BgpCapability::MultiProtocolExtensions(
            MultiProtocolExtensionsCapability::new(ng_family(*f)),
        ));
    }
    if caps.route_refresh {
        list.push(BgpCapability::RouteRefresh);
    }
    if let Some(gr) = &caps.graceful_restart {
        let afs: Vec<_> = gr
            .families
            .iter()
            .map(|(f, fwd)| GracefulRestartAddressFamily::new(*fwd, ng_family(*f)))
            .collect();
        list.push(BgpCapability::GracefulRestartCapability(
            GracefulRestartCapability::new(gr.restarting, false, gr.restart_time.min(4095), afs),
        ));
    }
    list.push(BgpCapability::FourOctetAs(FourOctetAsCapability::new(
        open.asn,
    )));
    // AS_TRANS (RFC 6793 §4.2.1) when the ASN does not fit the 2-octet field.
    let my_as = u16::try_from(open.asn).unwrap_or(23456);
    let ng = BgpOpenMessage::new(
        my_as,
        open.hold_time,
        open.router_id,
        vec![BgpOpenMessageParameter::Capabilities(list.into())],
    );
    write(&BgpMessage::Open(ng), "OPEN")
}

/// Encodes a KEEPALIVE.
pub fn encode_keepalive() -> Vec<u8> {
    write(&BgpMessage::KeepAlive, "KEEPALIVE").unwrap_or_else(|_| {
        // Unreachable in practice; fall back to the fixed 19-byte form.
        let mut v = vec![0xff; 16];
        v.extend_from_slice(&[0, 19, 4]);
        v
    })
}

/// Encodes a NOTIFICATION. Codes netgauze has no name for are written as the raw triple.
pub fn encode_notification(n: &Notification) -> Vec<u8> {
    let len = HEADER_LEN + 2 + n.data.len();
    if let Some(ng) = to_ng_notification(n) {
        if let Ok(v) = write(&BgpMessage::Notification(ng), "NOTIFICATION") {
            return v;
        }
    }
    // Truncate data so the message always fits (RFC 4271 limits every message to 4096).
    let data = &n.data[..n.data.len().min(MAX_MESSAGE_LEN - HEADER_LEN - 2)];
    let len = len.min(MAX_MESSAGE_LEN) as u16;
    let mut v = vec![0xff; 16];
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(&[3, n.code, n.subcode]);
    v.extend_from_slice(data);
    v
}

/// Encodes a ROUTE-REFRESH request.
pub fn encode_route_refresh(f: Family) -> Result<Vec<u8>, EncodeError> {
    let rr = BgpRouteRefreshMessage::new(ng_family(f), RouteRefreshSubcode::NormalRequest);
    write(&BgpMessage::RouteRefresh(rr), "ROUTE-REFRESH")
}

fn nlri(prefixes: &[Ipv6Net]) -> Result<Box<[Ipv6UnicastAddress]>, EncodeError> {
    prefixes
        .iter()
        .map(|p| {
            Ipv6Unicast::from_net(p.trunc())
                .map(|u| Ipv6UnicastAddress::new(None, u))
                .map_err(|_| EncodeError {
                    what: "UPDATE",
                    detail: format!("{p} is not an IPv6 unicast prefix"),
                })
        })
        .collect()
}

fn attr(
    optional: bool,
    transitive: bool,
    extended: bool,
    v: PathAttributeValue,
) -> Result<PathAttribute, EncodeError> {
    PathAttribute::from(optional, transitive, false, extended, v).map_err(|(_, e)| EncodeError {
        what: "UPDATE",
        detail: format!("path attribute flags: {e:?}"),
    })
}

/// ORIGIN, AS_PATH, MED and LOCAL_PREF as netgauze attributes.
fn base_attrs(attrs: &PathAttributes) -> Result<Vec<PathAttribute>, EncodeError> {
    // Empty segments are malformed on the wire (RFC 7606 §7.2): leave them out.
    let segs: Vec<As4PathSegment> = attrs
        .as_path
        .iter()
        .filter(|s| !matches!(s, AsSegment::Sequence(v) | AsSegment::Set(v) if v.is_empty()))
        .map(|s| match s {
            AsSegment::Sequence(v) => As4PathSegment::new(AsPathSegmentType::AsSequence, v.clone()),
            AsSegment::Set(v) => As4PathSegment::new(AsPathSegmentType::AsSet, v.clone()),
        })
        .collect();
    let path_bytes: usize = segs.iter().map(|s| 2 + 4 * s.as_numbers().len()).sum();
    let mut list = vec![
        attr(
            false,
            true,
            false,
            PathAttributeValue::Origin(match attrs.origin {
                Origin::Igp => NgOrigin::IGP,
                Origin::Egp => NgOrigin::EGP,
                Origin::Incomplete => NgOrigin::Incomplete,
            }),
        )?,
        attr(
            false,
            true,
            path_bytes > 255,
            PathAttributeValue::AsPath(AsPath::As4PathSegments(segs.into())),
        )?,
    ];
    if let Some(m) = attrs.med {
        list.push(attr(
            true,
            false,
            false,
            PathAttributeValue::MultiExitDiscriminator(MultiExitDiscriminator::new(m)),
        )?);
    }
    if let Some(l) = attrs.local_pref {
        list.push(attr(
            false,
            true,
            false,
            PathAttributeValue::LocalPreference(LocalPreference::new(l)),
        )?);
    }
    Ok(list)
}

/// Encodes announcements of `prefixes` (split over as many UPDATEs as needed).
pub fn encode_announce(reach: &Reach, attrs: &PathAttributes) -> Result<Vec<Vec<u8>>, EncodeError> {
    let base = base_attrs(attrs)?;
    let mut out = Vec::new();
    for chunk in reach.prefixes.chunks(PREFIXES_PER_UPDATE) {
        let mut list = base.clone();
        list.push(attr(
            true,
            false,
            true,
            PathAttributeValue::MpReach(MpReach::Ipv6Unicast {
                next_hop_global: reach.next_hop,
                next_hop_local: reach.next_hop_local,
                nlri: nlri(chunk)?,
            }),
        )?);
        let u = BgpUpdateMessage::new(vec![], list, vec![]);
        out.push(write(&BgpMessage::Update(u), "UPDATE")?);
    }
    Ok(out)
}

/// Encodes withdrawals (an empty list gives the End-of-RIB marker, RFC 4724 §2).
pub fn encode_withdraw(prefixes: &[Ipv6Net]) -> Result<Vec<Vec<u8>>, EncodeError> {
    let chunks: Vec<&[Ipv6Net]> = if prefixes.is_empty() {
        vec![&[]]
    } else {
        prefixes.chunks(PREFIXES_PER_UPDATE).collect()
    };
    chunks
        .into_iter()
        .map(|chunk| {
            let a = attr(
                true,
                false,
                true,
                PathAttributeValue::MpUnreach(MpUnreach::Ipv6Unicast { nlri: nlri(chunk)? }),
            )?;
            write(
                &BgpMessage::Update(BgpUpdateMessage::new(vec![], vec![a], vec![])),
                "UPDATE",
            )
        })
        .collect()
}

/// Encodes the End-of-RIB marker for a family.
pub fn encode_end_of_rib(f: Family) -> Result<Vec<u8>, EncodeError> {
    let msgs = match f {
        Family::Ipv6Unicast => encode_withdraw(&[])?,
        Family::L2vpnEvpn => encode_evpn_withdraw(&[])?,
    };
    msgs.into_iter().next().ok_or(EncodeError {
        what: "UPDATE",
        detail: "no End-of-RIB produced".into(),
    })
}

// ---- L2VPN EVPN (RFC 7432, RFC 8365) ----

fn unicast(ip: std::net::IpAddr) -> bool {
    !(ip.is_unspecified() || ip.is_multicast() || ip.is_loopback())
        && ip != std::net::IpAddr::V4(std::net::Ipv4Addr::BROADCAST)
}

/// The EVPN attributes of one UPDATE, applied to each of its routes.
#[derive(Debug, Default)]
struct EvpnAttrs {
    route_targets: Vec<RouteTarget>,
    vxlan: bool,
    mac_mobility: Option<u32>,
    pmsi_vni: Option<u32>,
}

impl EvpnAttrs {
    fn read(&mut self, communities: &[ExtendedCommunity]) {
        for c in communities {
            match c {
                ExtendedCommunity::TransitiveTwoOctet(
                    TransitiveTwoOctetExtendedCommunity::RouteTarget {
                        global_admin,
                        local_admin,
                    },
                ) => self.route_targets.push(RouteTarget {
                    asn: u32::from(*global_admin),
                    value: *local_admin,
                }),
                ExtendedCommunity::TransitiveFourOctet(
                    TransitiveFourOctetExtendedCommunity::RouteTarget {
                        global_admin,
                        local_admin,
                    },
                ) => self.route_targets.push(RouteTarget {
                    asn: *global_admin,
                    value: u32::from(*local_admin),
                }),
                ExtendedCommunity::TransitiveOpaque(
                    TransitiveOpaqueExtendedCommunity::Unassigned { sub_type, value },
                ) if *sub_type == ENCAPSULATION_SUBTYPE => {
                    // Value: 4 reserved octets, then the 2-octet tunnel type (RFC 9012 §4.1).
                    self.vxlan |= u16::from_be_bytes([value[4], value[5]]) == TUNNEL_VXLAN;
                }
                ExtendedCommunity::Evpn(EvpnExtendedCommunity::MacMobility { seq_no, .. }) => {
                    // A sender puts one (RFC 7432 §7.7); of several, the highest counts.
                    self.mac_mobility = Some(self.mac_mobility.map_or(*seq_no, |s| s.max(*seq_no)));
                }
                _ => {}
            }
        }
    }

    fn route(&self, nlri: EvpnNlri, next_hop: std::net::IpAddr) -> EvpnRoute {
        let mac = matches!(nlri, EvpnNlri::MacIp { .. });
        EvpnRoute {
            nlri,
            next_hop,
            route_targets: self.route_targets.clone(),
            encapsulation_vxlan: self.vxlan,
            mac_mobility: self.mac_mobility.filter(|_| mac),
            pmsi_vni: self.pmsi_vni.filter(|_| !mac),
        }
    }
}

/// The PMSI tunnel attribute: `Some(label)` for ingress replication, `None` for another
/// tunnel type; `Err` when too short.
fn decode_pmsi(v: &[u8]) -> Result<Option<u32>, String> {
    match v {
        [_flags, kind, l0, l1, l2, ..] => {
            Ok((*kind == PMSI_INGRESS_REPLICATION).then(|| u32::from_be_bytes([0, *l0, *l1, *l2])))
        }
        _ => Err(format!(
            "PMSI tunnel attribute is {} bytes, less than 5",
            v.len()
        )),
    }
}

/// What an EVPN MP_REACH held: next hop (`None`: bad length), routes of types 2 and 3, and
/// why some NLRI were malformed.
struct EvpnReach {
    next_hop: Option<std::net::IpAddr>,
    routes: Vec<EvpnNlri>,
    malformed: Option<String>,
}

fn reset(rec: &RawAttr<'_>, why: String) -> DecodeError {
    // RFC 7606 §5.3: the NLRI cannot be located → session reset.
    fatal(3, 9, rec.record.to_vec(), why)
}

fn decode_evpn_reach(rec: &RawAttr<'_>) -> Result<EvpnReach, DecodeError> {
    let v = rec.value();
    let nh_len = *v
        .get(3)
        .ok_or_else(|| reset(rec, "MP_REACH (EVPN) truncated before the next hop".into()))?
        as usize;
    let nh = v.get(4..4 + nh_len).ok_or_else(|| {
        reset(
            rec,
            format!("MP_REACH (EVPN) next hop length {nh_len} overruns the attribute"),
        )
    })?;
    let next_hop = match nh_len {
        4 => Some(std::net::IpAddr::from(
            <[u8; 4]>::try_from(nh).unwrap_or_default(),
        )),
        16 | 32 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&nh[..16]);
            Some(std::net::IpAddr::from(a))
        }
        _ => None,
    };
    let nlri = v.get(5 + nh_len..).ok_or_else(|| {
        reset(
            rec,
            "MP_REACH (EVPN) truncated before the reserved octet".into(),
        )
    })?;
    let (routes, malformed) = split_evpn_nlri(nlri, "MP_REACH").map_err(|w| reset(rec, w))?;
    Ok(EvpnReach {
        next_hop,
        routes,
        malformed,
    })
}

fn decode_evpn_unreach(
    rec: &RawAttr<'_>,
    report: &mut UpdateReport,
) -> Result<Vec<EvpnNlri>, DecodeError> {
    let nlri = &rec.value()[3..];
    let (routes, malformed) = split_evpn_nlri(nlri, "MP_UNREACH").map_err(|w| reset(rec, w))?;
    if let Some(why) = malformed {
        // A withdrawal that cannot be parsed cannot name a route; the others still apply.
        report.discarded.push((rec.code, why));
    }
    Ok(routes)
}

/// Splits EVPN NLRI (route type, length, value): `Err` when a length overruns (session reset),
/// else the routes of types 2 and 3, and the first reason one of them was malformed. Other
/// route types are skipped (RFC 7606 §5.4).
fn split_evpn_nlri(mut buf: &[u8], what: &str) -> Result<(Vec<EvpnNlri>, Option<String>), String> {
    let mut routes = Vec::new();
    let mut malformed = None;
    while !buf.is_empty() {
        let (kind, len) = match buf {
            [k, l, ..] => (*k, *l as usize),
            _ => return Err(format!("{what} (EVPN): NLRI header truncated")),
        };
        let Some(one) = buf.get(..2 + len) else {
            return Err(format!(
                "{what} (EVPN): route type {kind} length {len} overruns the attribute"
            ));
        };
        buf = &buf[2 + len..];
        if !matches!(kind, 2 | 3) {
            continue;
        }
        match parse_evpn_route(one) {
            Ok(n) => routes.push(n),
            Err(why) => {
                malformed.get_or_insert(format!("{what} (EVPN) route type {kind}: {why}"));
            }
        }
    }
    Ok((routes, malformed))
}

fn rd_from_ng(rd: NgRd) -> RouteDistinguisher {
    RouteDistinguisher(u64::from(rd).to_be_bytes())
}

fn rd_to_ng(rd: &RouteDistinguisher) -> Result<NgRd, EncodeError> {
    let b = rd.0;
    let u16at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
    let u32at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    Ok(match rd.rd_type() {
        0 => NgRd::As2Administrator {
            asn2: u16at(2),
            number: u32at(4),
        },
        1 => NgRd::Ipv4Administrator {
            ip: std::net::Ipv4Addr::new(b[2], b[3], b[4], b[5]),
            number: u16at(6),
        },
        2 => NgRd::As4Administrator {
            asn4: u32at(2),
            number: u16at(6),
        },
        t => {
            return Err(EncodeError {
                what: "UPDATE",
                detail: format!("route distinguisher type {t} is not 0, 1 or 2"),
            })
        }
    })
}

fn label_value(l: &MplsLabel) -> u32 {
    let v = l.value();
    u32::from_be_bytes([0, v[0], v[1], v[2]])
}

fn label_of(vni: u32) -> Result<MplsLabel, EncodeError> {
    if vni > MAX_VNI {
        return Err(EncodeError {
            what: "UPDATE",
            detail: format!("VNI {vni} does not fit 24 bits"),
        });
    }
    let b = vni.to_be_bytes();
    Ok(MplsLabel::new([b[1], b[2], b[3]]))
}

/// One NLRI (type, length, value) of type 2 or 3, through netgauze.
fn parse_evpn_route(one: &[u8]) -> Result<EvpnNlri, String> {
    let mut cur = SliceReader::new(one);
    let route = L2EvpnRoute::parse(&mut cur).map_err(|e| e.to_string())?;
    let (nlri, expect) = match &route {
        L2EvpnRoute::MacIpAdvertisement(m) => {
            let ip_len = match m.ip() {
                None => 0,
                Some(std::net::IpAddr::V4(_)) => 4,
                Some(std::net::IpAddr::V6(_)) => 16,
            };
            let l2 = if m.mpls_label2().is_some() { 3 } else { 0 };
            let n = EvpnNlri::MacIp {
                rd: rd_from_ng(m.rd()),
                ethernet_tag: m.tag().value(),
                mac: *m.mac().value(),
                ip: m.ip(),
                vni: label_value(m.mpls_label1()),
            };
            (n, 33 + ip_len + l2)
        }
        L2EvpnRoute::InclusiveMulticastEthernetTagRoute(r) => {
            let n = EvpnNlri::Inclusive {
                rd: rd_from_ng(r.rd()),
                ethernet_tag: r.tag().value(),
                originator: r.ip(),
            };
            (n, if r.ip().is_ipv4() { 17 } else { 29 })
        }
        _ => return Err("unexpected route type".into()),
    };
    if one.len() != 2 + expect {
        return Err(format!(
            "length {} does not match its fields ({expect})",
            one.len() - 2
        ));
    }
    Ok(nlri)
}

fn evpn_to_ng(n: &EvpnNlri) -> Result<L2EvpnAddress, EncodeError> {
    let route = match n {
        EvpnNlri::MacIp {
            rd,
            ethernet_tag,
            mac,
            ip,
            vni,
        } => L2EvpnRoute::MacIpAdvertisement(MacIpAdvertisement::new(
            rd_to_ng(rd)?,
            EthernetSegmentIdentifier::new([0; 10]),
            EthernetTag::new(*ethernet_tag),
            MacAddress::new(*mac),
            *ip,
            label_of(*vni)?,
            None,
        )),
        EvpnNlri::Inclusive {
            rd,
            ethernet_tag,
            originator,
        } => L2EvpnRoute::InclusiveMulticastEthernetTagRoute(
            InclusiveMulticastEthernetTagRoute::new(
                rd_to_ng(rd)?,
                EthernetTag::new(*ethernet_tag),
                *originator,
            ),
        ),
    };
    Ok(L2EvpnAddress::new(None, route))
}

fn route_target(rt: &RouteTarget) -> Result<ExtendedCommunity, EncodeError> {
    if let Ok(asn) = u16::try_from(rt.asn) {
        return Ok(ExtendedCommunity::TransitiveTwoOctet(
            TransitiveTwoOctetExtendedCommunity::RouteTarget {
                global_admin: asn,
                local_admin: rt.value,
            },
        ));
    }
    let value = u16::try_from(rt.value).map_err(|_| EncodeError {
        what: "UPDATE",
        detail: format!(
            "route target {rt}: a 4-octet AS leaves 16 bits for the value (see RouteTarget::for_vni)"
        ),
    })?;
    Ok(ExtendedCommunity::TransitiveFourOctet(
        TransitiveFourOctetExtendedCommunity::RouteTarget {
            global_admin: rt.asn,
            local_admin: value,
        },
    ))
}

/// Encodes one EVPN route (MP_REACH AFI 25 / SAFI 70) with route targets, the VXLAN
/// encapsulation community, MAC mobility (type 2) and the PMSI tunnel attribute (type 3).
pub fn encode_evpn_announce(r: &EvpnRoute, attrs: &PathAttributes) -> Result<Vec<u8>, EncodeError> {
    let mut list = base_attrs(attrs)?;
    let mut ecs = r
        .route_targets
        .iter()
        .map(route_target)
        .collect::<Result<Vec<_>, _>>()?;
    if r.encapsulation_vxlan {
        let t = TUNNEL_VXLAN.to_be_bytes();
        ecs.push(ExtendedCommunity::TransitiveOpaque(
            TransitiveOpaqueExtendedCommunity::Unassigned {
                sub_type: ENCAPSULATION_SUBTYPE,
                value: [0, 0, 0, 0, t[0], t[1]],
            },
        ));
    }
    let is_mac = matches!(r.nlri, EvpnNlri::MacIp { .. });
    if let Some(seq) = r.mac_mobility.filter(|_| is_mac) {
        ecs.push(ExtendedCommunity::Evpn(
            EvpnExtendedCommunity::MacMobility {
                flags: 0,
                seq_no: seq,
            },
        ));
    }
    if !ecs.is_empty() {
        list.push(attr(
            true,
            true,
            ecs.len() * 8 > 255,
            PathAttributeValue::ExtendedCommunities(ExtendedCommunities::new(ecs)),
        )?);
    }
    if let (EvpnNlri::Inclusive { originator, .. }, Some(vni)) = (&r.nlri, r.pmsi_vni) {
        // Flags 0, ingress replication, label = VNI, tunnel id = the originator (RFC 8365).
        let mut v = vec![0, PMSI_INGRESS_REPLICATION];
        v.extend_from_slice(label_of(vni)?.value());
        match originator {
            std::net::IpAddr::V4(a) => v.extend_from_slice(&a.octets()),
            std::net::IpAddr::V6(a) => v.extend_from_slice(&a.octets()),
        }
        list.push(attr(
            true,
            true,
            false,
            PathAttributeValue::UnknownAttribute(UnknownAttribute::new(PMSI_TUNNEL, v)),
        )?);
    }
    list.push(attr(
        true,
        false,
        true,
        PathAttributeValue::MpReach(MpReach::L2Evpn {
            next_hop: r.next_hop,
            nlri: vec![evpn_to_ng(&r.nlri)?].into(),
        }),
    )?);
    write(
        &BgpMessage::Update(BgpUpdateMessage::new(vec![], list, vec![])),
        "UPDATE",
    )
}

/// Encodes EVPN withdrawals (an empty list gives the EVPN End-of-RIB marker).
pub fn encode_evpn_withdraw(nlri: &[EvpnNlri]) -> Result<Vec<Vec<u8>>, EncodeError> {
    let chunks: Vec<&[EvpnNlri]> = if nlri.is_empty() {
        vec![&[]]
    } else {
        nlri.chunks(EVPN_PER_UPDATE).collect()
    };
    chunks
        .into_iter()
        .map(|chunk| {
            let nlri = chunk
                .iter()
                .map(evpn_to_ng)
                .collect::<Result<Vec<_>, _>>()?;
            let a = attr(
                true,
                false,
                true,
                PathAttributeValue::MpUnreach(MpUnreach::L2Evpn { nlri: nlri.into() }),
            )?;
            write(
                &BgpMessage::Update(BgpUpdateMessage::new(vec![], vec![a], vec![])),
                "UPDATE",
            )
        })
        .collect()
}
