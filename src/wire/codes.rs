//! Every numeric code Wendy puts on the wire, each defined once, in disjoint ranges, so that a
//! number read anywhere means one thing.
//!
//! | range           | codes                | carried in                                           |
//! |-----------------|----------------------|------------------------------------------------------|
//! | `0x000..=0x0ff` | [`CloseCode`]        | QUIC `CONNECTION_CLOSE` (application close)          |
//! | `0x100..=0x1ff` | [`StreamErrorCode`]  | QUIC `RESET_STREAM` / `STOP_SENDING` of one stream   |
//! | `0x200..=0x2ff` | [`ErrorCode`]        | the `code` of a [`Body::Error`](super::Body::Error) |
//! | `0x300..=0x3ff` | [`PayloadKind`]      | the envelope of a routed or direct payload ([`super::envelope`]) |
//!
//! Inside the stream range, `0x100..=0x17f` are the transport's framing codes and
//! `0x180..=0x1bf` the service mesh's tunnel codes and `0x1c0..=0x1ff` the relays' refusals. A new code takes the next free value of its
//! range; a value is never reused for another meaning.
//!
//! Compatibility: these values differ from Wendy builds that had no registry (they reused
//! 1, 2, 3, ... in all three namespaces). Those builds write frame version 1, without the
//! payload envelope, which this build refuses (it reads only [`VERSION`](super::VERSION)), so the two
//! never read each other's codes.
//!
//! This module only names numbers; it knows nothing of QUIC (the transport turns a code into a
//! QUIC varint).

use std::ops::RangeInclusive;

use super::WireError;

/// Declares a code enum with its range, its list of variants and its decoding, so that each
/// value is written once.
macro_rules! codes {
    (
        $(#[$meta:meta])*
        pub enum $name:ident: $repr:ident in $low:literal..=$high:literal {
            $( $(#[$variant_meta:meta])* $variant:ident = $value:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr($repr)]
        #[non_exhaustive]
        pub enum $name {
            $( $(#[$variant_meta])* $variant = $value, )+
        }

        impl $name {
            /// The values this namespace may use; no other namespace uses any of them.
            pub const RANGE: RangeInclusive<u32> = $low..=$high;

            /// Every code of this namespace, in declaration order.
            pub const ALL: &'static [Self] = &[$( Self::$variant, )+];

            /// The code's number on the wire.
            pub const fn value(self) -> u32 {
                self as u32
            }

            /// The code with this number, if Wendy defines it in this namespace.
            pub const fn from_u64(value: u64) -> Option<Self> {
                match value {
                    $( $value => Some(Self::$variant), )+
                    _ => None,
                }
            }
        }

        impl From<$name> for u64 {
            fn from(code: $name) -> Self {
                code as Self
            }
        }
    };
}

codes! {
    /// Application close codes of a whole QUIC link.
    pub enum CloseCode: u32 in 0x000..=0x0ff {
        /// An orderly close.
        Closed = 0x000,
        /// The link lost a simultaneous-dial race (the one initiated by the lower node id
        /// survives).
        Duplicate = 0x001,
        /// The pool was full and this link was the least recently used idle one.
        Evicted = 0x002,
        /// The link was unused for the transport's idle-link timeout.
        Idle = 0x003,
        /// The node is shutting down.
        Shutdown = 0x004,
        /// The peer did not negotiate ALPN `wendy/1`.
        WrongAlpn = 0x005,
        /// The pool was full of busy links.
        TooManyConnections = 0x006,
        /// The peer is this node itself.
        SelfConnection = 0x007,
        /// The peer's identity is already linked from another address, and that link still
        /// answers; the close reason names that address.
        IdentityInUse = 0x008,
    }
}

codes! {
    /// Application error codes with which a single stream is stopped or reset; the link and
    /// its other streams continue.
    pub enum StreamErrorCode: u32 in 0x100..=0x1ff {
        /// The frame was not a valid encoding.
        Malformed = 0x101,
        /// The stream ended before the frame was complete.
        Truncated = 0x102,
        /// The frame was larger than the maximum message size.
        Oversized = 0x103,
        /// The frame had an unknown version byte.
        UnknownVersion = 0x104,
        /// The frame, or a stream's header, was of an unknown kind (probably from a newer peer).
        UnknownKind = 0x105,
        /// The request was dropped without an answer.
        NoReply = 0x106,
        /// The frame took too long to arrive.
        Timeout = 0x107,
        /// The node is shutting down.
        Shutdown = 0x108,
        /// The frame did not fit the link's or the node's read budget (too many unfinished
        /// frames at once); send it again later.
        Overloaded = 0x109,
        /// Tunnel refused: the provider does not expose the service asked for.
        NoSuchService = 0x180,
        /// Tunnel refused: the provider cannot reach its service (connection refused or no
        /// answer in time).
        ServiceUnreachable = 0x181,
        /// Tunnel refused: the provider serves as many tunnels as it allows.
        ProviderBusy = 0x182,
        /// An open tunnel broke on the other side (its TCP connection or stream failed).
        TunnelBroken = 0x183,
        /// Relay refused: this node does not serve as a relay.
        RelayNotARelay = 0x1c0,
        /// Relay refused: the target node is not homed on this relay.
        RelayNotHomed = 0x1c1,
        /// Relay refused: the relay carries as many relayed links (or homes as many nodes) as
        /// its limits allow.
        RelayFull = 0x1c2,
        /// Relay refused, or a relayed link ended: the relay could not reach the target node.
        RelayTargetUnreachable = 0x1c3,
    }
}

codes! {
    /// The codes Wendy itself puts in [`Body::Error`](super::Body::Error).
    pub enum ErrorCode: u16 in 0x200..=0x2ff {
        /// The request could not be decoded.
        BadRequest = 0x201,
        /// Nobody on the receiving node handles this kind of request.
        Unsupported = 0x202,
        /// The receiving node is shutting down or overloaded.
        Unavailable = 0x203,
        /// The named service does not exist.
        NoSuchService = 0x204,
        /// The application refused the request.
        Refused = 0x205,
    }
}

codes! {
    /// Whose a routed or direct payload is: the kind the node runtime writes in the envelope
    /// around every payload it sends ([`super::envelope`]), so that a layer of Wendy (the
    /// service mesh) and the application never read each other's payloads.
    pub enum PayloadKind: u32 in 0x300..=0x3ff {
        /// The application's payload: what [`Node::route`](crate::node::Node::route) and
        /// [`Node::send`](crate::node::Node::send) send, and
        /// [`NodeEvent::Deliver`](crate::node::NodeEvent::Deliver) and
        /// [`NodeEvent::Direct`](crate::node::NodeEvent::Direct) hand over.
        Application = 0x300,
        /// A service-mesh message ([`crate::mesh`]); applications can neither send nor see one.
        Mesh = 0x301,
        /// A topics (publish/subscribe) message ([`crate::topics`]), served by every node.
        Topic = 0x302,
    }
}

impl From<ErrorCode> for u16 {
    fn from(code: ErrorCode) -> Self {
        code as Self
    }
}

impl StreamErrorCode {
    /// The stream error code for a frame that failed to decode.
    pub fn for_wire_error(error: &WireError) -> Self {
        match error {
            WireError::Truncated => Self::Truncated,
            WireError::Oversized { .. } => Self::Oversized,
            WireError::UnknownVersion(_) => Self::UnknownVersion,
            WireError::UnknownKind(_)
            | WireError::UnknownVariant(_)
            | WireError::UnknownPayloadKind(_) => Self::UnknownKind,
            WireError::Malformed(_) | WireError::TrailingBytes(_) | WireError::Encode(_) => {
                Self::Malformed
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every namespace as (name, range, its codes' values).
    fn namespaces() -> Vec<(&'static str, RangeInclusive<u32>, Vec<u32>)> {
        vec![
            (
                "close",
                CloseCode::RANGE,
                CloseCode::ALL.iter().map(|c| c.value()).collect(),
            ),
            (
                "stream",
                StreamErrorCode::RANGE,
                StreamErrorCode::ALL.iter().map(|c| c.value()).collect(),
            ),
            (
                "error",
                ErrorCode::RANGE,
                ErrorCode::ALL.iter().map(|c| c.value()).collect(),
            ),
            (
                "payload kind",
                PayloadKind::RANGE,
                PayloadKind::ALL.iter().map(|c| c.value()).collect(),
            ),
        ]
    }

    #[test]
    fn namespaces_have_disjoint_ranges_and_every_code_lies_in_its_own() {
        let namespaces = namespaces();
        for (i, (name, range, values)) in namespaces.iter().enumerate() {
            for value in values {
                assert!(
                    range.contains(value),
                    "{name} code {value:#x} outside {range:?}"
                );
            }
            for (other, other_range, _) in &namespaces[i + 1..] {
                let overlap =
                    range.start() <= other_range.end() && other_range.start() <= range.end();
                assert!(
                    !overlap,
                    "{name} {range:?} overlaps {other} {other_range:?}"
                );
            }
        }
        // Hence no number is two codes, whatever namespace it is read in.
        let mut all: Vec<u32> = namespaces.into_iter().flat_map(|(_, _, v)| v).collect();
        let count = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), count);
    }

    #[test]
    fn decoding_a_code_gives_back_its_variant_and_only_in_its_namespace() {
        for &code in CloseCode::ALL {
            let value = u64::from(code);
            assert_eq!(CloseCode::from_u64(value), Some(code));
            assert_eq!(StreamErrorCode::from_u64(value), None);
            assert_eq!(ErrorCode::from_u64(value), None);
            assert_eq!(PayloadKind::from_u64(value), None);
        }
        for &code in StreamErrorCode::ALL {
            let value = u64::from(code);
            assert_eq!(StreamErrorCode::from_u64(value), Some(code));
            assert_eq!(CloseCode::from_u64(value), None);
            assert_eq!(ErrorCode::from_u64(value), None);
            assert_eq!(PayloadKind::from_u64(value), None);
        }
        for &code in ErrorCode::ALL {
            let value = u64::from(code);
            assert_eq!(u64::from(u16::from(code)), value);
            assert_eq!(ErrorCode::from_u64(value), Some(code));
            assert_eq!(CloseCode::from_u64(value), None);
            assert_eq!(StreamErrorCode::from_u64(value), None);
            assert_eq!(PayloadKind::from_u64(value), None);
        }
        for &kind in PayloadKind::ALL {
            let value = u64::from(kind);
            assert_eq!(PayloadKind::from_u64(value), Some(kind));
            assert_eq!(CloseCode::from_u64(value), None);
            assert_eq!(StreamErrorCode::from_u64(value), None);
            assert_eq!(ErrorCode::from_u64(value), None);
        }
    }

    #[test]
    fn unknown_numbers_decode_to_none() {
        for value in [0x0ff, 0x100, 0x1ff, 0x200, 0x2ff, 0x3ff, 0x400, u64::MAX] {
            assert_eq!(CloseCode::from_u64(value), None);
            assert_eq!(StreamErrorCode::from_u64(value), None);
            assert_eq!(ErrorCode::from_u64(value), None);
            assert_eq!(PayloadKind::from_u64(value), None);
        }
    }

    #[test]
    fn the_mesh_codes_are_tunnel_codes_apart_from_the_framing_codes() {
        // The mesh reads these off a reset stream; none may be a framing code the transport
        // sends on its own.
        for code in [
            StreamErrorCode::NoSuchService,
            StreamErrorCode::ServiceUnreachable,
            StreamErrorCode::ProviderBusy,
            StreamErrorCode::TunnelBroken,
        ] {
            assert!((0x180..=0x1ff).contains(&code.value()), "{code:?}");
        }
        for error in [
            WireError::Truncated,
            WireError::Malformed(String::new()),
            WireError::Oversized { len: 2, max: 1 },
            WireError::UnknownVersion(9),
            WireError::UnknownKind(9),
            WireError::UnknownVariant("pastry"),
            WireError::UnknownPayloadKind(9),
            WireError::TrailingBytes(1),
            WireError::Encode(String::new()),
        ] {
            let code = StreamErrorCode::for_wire_error(&error).value();
            assert!((0x100..=0x17f).contains(&code), "{error}: {code:#x}");
        }
    }
}
