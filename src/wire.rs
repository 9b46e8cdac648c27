//! Wendy's wire format: the frames carried on QUIC streams and their versioned encoding.
//!
//! A frame is one version byte ([`VERSION`]) followed by a [postcard] encoding of a [`Body`].
//! Each QUIC stream carries exactly one frame, so the frame ends where the stream ends and there
//! is no length prefix; readers bound the stream by the configured maximum frame size.
//!
//! Extensibility: new kinds of frame are added as new [`Body`] variants *at the end* of the enum
//! (postcard encodes the variant index). An older peer that receives a kind it does not know
//! gets [`WireError::UnknownKind`] and drops only that stream; the connection stays up. A change
//! that old peers cannot read at all bumps [`VERSION`], which they reject with
//! [`WireError::UnknownVersion`].
//!
//! Routed and direct payloads are not the application's bytes as such: the node runtime wraps
//! each in an [`envelope`] that names its [`PayloadKind`] (the application's, or the service
//! mesh's), so the receiver knows whose it is without guessing from its bytes. The envelope is
//! part of [`VERSION`] 2; a version-1 peer would hand it to its application as payload bytes,
//! hence the version bump.
//!
//! This module owns the encoding, the payload envelope and the registry of numeric codes
//! ([`codes`]); it knows nothing of QUIC (see [`crate::transport`]).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::pastry;

pub mod codes;
pub mod envelope;
pub mod shared;

pub use codes::{ErrorCode, PayloadKind};
pub use shared::{decode_shared, encode_chunks};

/// The frame format version this build writes and reads (2: routed and direct payloads are in
/// an [`envelope`]; 3: a routed message carries its origin's signature, see
/// [`crate::pastry::origin`]; 4: a root answers a routed message's origin,
/// [`crate::pastry::Message::RootAnswer`], and relays, whose frames an older build cannot
/// serve, and private nodes advertised at synthetic addresses an older build cannot dial, see
/// [`crate::relay`]; 5: the control messages a node sends one peer at once share a frame,
/// [`Body::PastryBatch`], which an older build would drop, losing acknowledgements; 6: probes
/// and their replies carry failure claims, [`crate::pastry::FailureClaim`]; 7: a root without a
/// link to a message's origin passes its answer back along the route,
/// [`crate::pastry::Message::RootAnswerRelay`], which an older hop would drop as an unknown
/// message and an older origin could not use).
pub const VERSION: u8 = 7;

/// Most messages one [`Body::PastryBatch`] frame may carry; a frame with more is malformed.
pub const MAX_PASTRY_BATCH: usize = 64;

/// The default bound on an encoded frame (version byte included): 1 MiB.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 1 << 20;

/// Everything one node can say to another on one stream.
///
/// Append new variants at the end only: the variant index is part of the encoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// A Pastry protocol message (join, state rows, leaf set, probes, routed messages, acks,
    /// leave).
    Pastry(pastry::Message),
    /// A payload sent directly to this peer (not routed).
    Direct {
        /// The payload in its [`envelope`] (which says whose it is).
        #[serde(with = "shared")]
        payload: Bytes,
    },
    /// An error answer to a request, or a notice that something the peer sent was refused.
    Error {
        /// A machine-readable code (see [`ErrorCode`] for the codes Wendy itself uses).
        code: u16,
        /// A human-readable explanation.
        message: String,
    },
    /// A liveness / round-trip request; the answer is [`Body::Pong`] with the same nonce.
    Ping {
        /// Echoed in the answer.
        nonce: u64,
    },
    /// The answer to [`Body::Ping`].
    Pong {
        /// The nonce of the ping being answered.
        nonce: u64,
    },
    /// The header of a raw bi-directional stream: after this frame, the stream carries the
    /// named service's bytes (the service mesh's TCP tunnels).
    Tunnel {
        /// The name of the service the opener wants to reach.
        service: String,
    },
    /// Address discovery and reachability (requests and their answers, see [`crate::reach`]).
    Reach(crate::reach::ReachMessage),
    /// The header of a raw bi stream with which a private node homes on a relay: the relay
    /// answers one byte (0: accepted) or resets the stream, then both sides send keep-alives
    /// for as long as the node stays homed (see [`crate::relay`]).
    RelayHome,
    /// The header of a raw bi stream asking a relay to carry datagrams to `target`, a node
    /// homed on it: the relay answers one byte (0: accepted) or resets the stream, then copies
    /// bytes between this stream and one it opens to the target.
    RelayConnect {
        /// The homed node to reach.
        target: crate::id::NodeId,
        /// The address the opener says it listens on (a synthetic one if it is private itself).
        advertised: std::net::SocketAddr,
    },
    /// The header of a raw bi stream a relay opens to a node homed on it, carrying the
    /// datagrams of `from`, which asked for it with [`Body::RelayConnect`].
    RelayIncoming {
        /// The node at the other end (authenticated by the relay's link to it).
        from: crate::id::NodeId,
        /// The address `from` says it listens on.
        advertised: std::net::SocketAddr,
    },
    /// A signed relay record ([`crate::relay::SignedRelayRecord`]), one-way: which relays reach
    /// a private node.
    RelayRecord {
        /// The record's encoding.
        #[serde(with = "byte_buf")]
        record: Vec<u8>,
    },
    /// A request for the relay record of `node`: answered with [`Body::RelayRecord`], or an
    /// [`Body::Error`] when the peer holds none.
    RelayRecordQuery {
        /// The private node whose record is wanted.
        node: crate::id::NodeId,
    },
    /// Several Pastry messages for the same peer, made at the same moment (a root's
    /// acknowledgement of a routed message and its answer to the message's origin, for
    /// example): one stream instead of one each. Each means what it means alone, in this
    /// order. At most [`MAX_PASTRY_BATCH`] of them.
    PastryBatch(Vec<pastry::Message>),
    /// Hole punching between two nodes linked through a relay (requests and their answers,
    /// see [`crate::punch`]).
    Punch(crate::punch::PunchMessage),
}

impl Body {
    /// The number of [`Body`] variants this build knows; indexes at or above it are
    /// [`WireError::UnknownKind`].
    pub const KINDS: u32 = 14;

    /// A short name of the frame's kind, for logs.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::Pastry(_) => "pastry",
            Self::Direct { .. } => "direct",
            Self::Error { .. } => "error",
            Self::Ping { .. } => "ping",
            Self::Pong { .. } => "pong",
            Self::Tunnel { .. } => "tunnel",
            Self::Reach(_) => "reach",
            Self::RelayHome => "relay-home",
            Self::RelayConnect { .. } => "relay-connect",
            Self::RelayIncoming { .. } => "relay-incoming",
            Self::RelayRecord { .. } => "relay-record",
            Self::RelayRecordQuery { .. } => "relay-record-query",
            Self::PastryBatch(_) => "pastry-batch",
            Self::Punch(_) => "punch",
        }
    }
}

/// Serde helpers that encode a `Vec<u8>` as a byte string (defined next to the Pastry
/// messages, whose routed payloads use it).
pub use crate::pastry::message::byte_buf;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The frame ended before it was complete (this includes an empty frame).
    #[error("truncated frame")]
    Truncated,
    /// The frame's bytes are not a valid encoding of any frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The frame is larger than the configured maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    Oversized {
        /// The frame's length (or at least this many bytes, when reading stopped early).
        len: usize,
        /// The maximum frame size in force.
        max: usize,
    },
    /// The frame was written with a format version this build does not read.
    #[error("unknown frame version {0} (this build reads version {VERSION})")]
    UnknownVersion(u8),
    /// The frame is of a kind this build does not know (probably from a newer peer).
    #[error("unknown frame kind {0}")]
    UnknownKind(u32),
    /// A value inside the frame uses a variant this build does not know (for example a Pastry
    /// message kind from a newer peer).
    #[error("unknown variant inside a {0} frame")]
    UnknownVariant(&'static str),
    /// A routed or direct payload's [`envelope`] names a kind this build does not know
    /// (probably from a newer peer).
    #[error("unknown payload kind {0:#x}")]
    UnknownPayloadKind(u32),
    /// The frame has bytes left over after a complete body.
    #[error("{0} trailing bytes after the frame body")]
    TrailingBytes(usize),
    /// The body could not be serialised (never expected for Wendy's own types).
    #[error("cannot encode frame: {0}")]
    Encode(String),
}

/// Encodes `body` as a frame: the version byte followed by the postcard body.
///
/// ```
/// use wendy::wire::{decode, encode, Body, DEFAULT_MAX_FRAME_SIZE};
/// let body = Body::Direct { payload: b"hello".to_vec().into() };
/// let frame = encode(&body)?;
/// assert_eq!(decode(&frame, DEFAULT_MAX_FRAME_SIZE)?, body);
/// # Ok::<(), wendy::wire::WireError>(())
/// ```
pub fn encode(body: &Body) -> Result<Bytes, WireError> {
    let mut frame = Vec::with_capacity(encoded_size_hint(body));
    frame.push(VERSION);
    let frame =
        postcard::to_extend(body, frame).map_err(|error| WireError::Encode(error.to_string()))?;
    Ok(Bytes::from(frame))
}

/// Encodes `body` and checks the frame against `max_size` (what the receiver will accept).
pub fn encode_bounded(body: &Body, max_size: usize) -> Result<Bytes, WireError> {
    let frame = encode(body)?;
    if frame.len() > max_size {
        return Err(WireError::Oversized {
            len: frame.len(),
            max: max_size,
        });
    }
    Ok(frame)
}

/// Decodes one complete frame of at most `max_size` bytes.
///
/// Never panics, whatever the input.
pub fn decode(frame: &[u8], max_size: usize) -> Result<Body, WireError> {
    if frame.len() > max_size {
        return Err(WireError::Oversized {
            len: frame.len(),
            max: max_size,
        });
    }
    let (&version, rest) = frame.split_first().ok_or(WireError::Truncated)?;
    if version != VERSION {
        return Err(WireError::UnknownVersion(version));
    }
    let (kind, _) = read_varint_u32(rest, "variant index")?;
    if kind >= Body::KINDS {
        return Err(WireError::UnknownKind(kind));
    }
    match postcard::take_from_bytes::<Body>(rest) {
        Ok((Body::PastryBatch(messages), [])) if messages.len() > MAX_PASTRY_BATCH => {
            Err(WireError::Malformed(format!(
                "a pastry batch of {} messages (at most {MAX_PASTRY_BATCH})",
                messages.len()
            )))
        }
        Ok((body, [])) => Ok(body),
        Ok((_, trailing)) => Err(WireError::TrailingBytes(trailing.len())),
        Err(error) => Err(classify(error, kind)),
    }
}

/// Reads the postcard varint (LEB128) `what` at the start of `bytes`: its value and length.
fn read_varint_u32(bytes: &[u8], what: &str) -> Result<(u32, usize), WireError> {
    let mut value: u32 = 0;
    for (index, &byte) in bytes.iter().enumerate().take(5) {
        let bits = u32::from(byte & 0x7f);
        // The fifth byte holds the top 4 bits of a u32; anything more does not fit.
        if index == 4 && bits > 0x0f {
            return Err(WireError::Malformed(format!("{what} overflows u32")));
        }
        value |= bits << (7 * index);
        if byte & 0x80 == 0 {
            return Ok((value, index + 1));
        }
    }
    if bytes.len() < 5 {
        Err(WireError::Truncated)
    } else {
        Err(WireError::Malformed(format!("{what} overflows u32")))
    }
}

fn classify(error: postcard::Error, kind: u32) -> WireError {
    match error {
        postcard::Error::DeserializeUnexpectedEnd => WireError::Truncated,
        // Serde reports an unknown variant index through a custom error, which postcard keeps
        // as `SerdeDeCustom`; nothing else in Wendy's types produces a custom error.
        postcard::Error::SerdeDeCustom => WireError::UnknownVariant(kind_name_of(kind)),
        other => WireError::Malformed(other.to_string()),
    }
}

fn kind_name_of(kind: u32) -> &'static str {
    match kind {
        0 => "pastry",
        1 => "direct",
        2 => "error",
        3 => "ping",
        4 => "pong",
        5 => "tunnel",
        6 => "reach",
        7 => "relay-home",
        8 => "relay-connect",
        9 => "relay-incoming",
        10 => "relay-record",
        11 => "relay-record-query",
        12 => "pastry-batch",
        13 => "punch",
        _ => "unknown",
    }
}

fn encoded_size_hint(body: &Body) -> usize {
    const OVERHEAD: usize = 16;
    OVERHEAD
        + match body {
            Body::Direct { payload } => payload.len(),
            // The fixed fields, a few avoided ids and the origin's proof (97 bytes).
            Body::Pastry(pastry::Message::Route { payload, .. }) => payload.len() + 64 + 97,
            Body::Error { message, .. } => message.len(),
            Body::Tunnel { service } => service.len(),
            _ => 256,
        }
}

#[cfg(test)]
pub(crate) mod strategy {
    //! Proptest strategies for frames, shared by the property tests.
    use proptest::prelude::*;

    use super::Body;

    /// Any [`Body`], with nested Pastry messages from
    /// [`crate::pastry::message::strategy::message`].
    pub(crate) fn any_body() -> impl Strategy<Value = Body> {
        prop_oneof![
            crate::pastry::message::strategy::message().prop_map(Body::Pastry),
            proptest::collection::vec(any::<u8>(), 0..512).prop_map(|payload| Body::Direct {
                payload: payload.into(),
            }),
            (any::<u16>(), ".{0,64}").prop_map(|(code, message)| Body::Error { code, message }),
            any::<u64>().prop_map(|nonce| Body::Ping { nonce }),
            any::<u64>().prop_map(|nonce| Body::Pong { nonce }),
            "[a-z0-9:_-]{0,32}".prop_map(|service| Body::Tunnel { service }),
            crate::reach::message::strategy::message().prop_map(Body::Reach),
            proptest::collection::vec(crate::pastry::message::strategy::message(), 0..4)
                .prop_map(Body::PastryBatch),
            crate::punch::message::strategy::message().prop_map(Body::Punch),
        ]
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::strategy::any_body;
    use super::*;
    use crate::id::{Key, NodeId};
    use crate::pastry::{Message, PeerInfo};

    const MAX: usize = DEFAULT_MAX_FRAME_SIZE;

    fn peer(n: u128) -> PeerInfo {
        PeerInfo {
            id: NodeId::from_u128(n),
            addr: "127.0.0.1:4000".parse().unwrap_or_else(|_| unreachable!()),
        }
    }

    #[test]
    fn frame_starts_with_the_version_byte() {
        let frame = encode(&Body::Ping { nonce: 7 }).unwrap();
        assert_eq!(frame[0], VERSION);
        assert_eq!(decode(&frame, MAX).unwrap(), Body::Ping { nonce: 7 });
    }

    #[test]
    fn kinds_constant_matches_the_enum() {
        // The last variant's index must be KINDS - 1: encoding it yields that index.
        let frame = encode(&Body::Punch(crate::punch::PunchMessage::Offer {
            token: 1,
            advertised: "127.0.0.1:4000".parse().unwrap(),
            addrs: Vec::new(),
        }))
        .unwrap();
        assert_eq!(u32::from(frame[1]), Body::KINDS - 1);
        assert_eq!(kind_name_of(Body::KINDS - 1), "punch");
        assert_eq!(kind_name_of(Body::KINDS), "unknown");
    }

    #[test]
    fn byte_string_payload_encodes_like_a_u8_sequence() {
        // The `byte_buf` helper must not change the wire format of `Vec<u8>` fields.
        #[derive(serde::Serialize)]
        enum Plain {
            _Pastry(()),
            Direct { payload: Vec<u8> },
        }
        let payload: Vec<u8> = (0..=255).collect();
        let plain = postcard::to_allocvec(&Plain::Direct {
            payload: payload.clone(),
        })
        .unwrap();
        let ours = encode(&Body::Direct {
            payload: payload.into(),
        })
        .unwrap();
        assert_eq!(&ours[1..], &plain[..]);
    }

    #[test]
    fn empty_frame_is_truncated() {
        assert_eq!(decode(&[], MAX), Err(WireError::Truncated));
        assert_eq!(decode(&[VERSION], MAX), Err(WireError::Truncated));
    }

    #[test]
    fn unknown_version_is_its_own_error() {
        let mut frame = encode(&Body::Ping { nonce: 1 }).unwrap().to_vec();
        frame[0] = VERSION + 1;
        assert_eq!(
            decode(&frame, MAX),
            Err(WireError::UnknownVersion(VERSION + 1))
        );
        // Version 1 had no payload envelope: its payloads would be misread, so it is refused.
        frame[0] = 1;
        assert_eq!(decode(&frame, MAX), Err(WireError::UnknownVersion(1)));
        frame[0] = 0;
        assert_eq!(decode(&frame, MAX), Err(WireError::UnknownVersion(0)));
    }

    #[test]
    fn unknown_kind_from_a_newer_peer_is_its_own_error() {
        let next = u8::try_from(Body::KINDS).unwrap();
        assert_eq!(
            decode(&[VERSION, next, 1, 2, 3], MAX),
            Err(WireError::UnknownKind(Body::KINDS))
        );
        // A multi-byte varint index (300 = 0xac 0x02).
        assert_eq!(
            decode(&[VERSION, 0xac, 0x02], MAX),
            Err(WireError::UnknownKind(300))
        );
    }

    #[test]
    fn unknown_pastry_variant_is_reported_as_unknown_variant() {
        // Body::Pastry (0) wrapping a message index far beyond the current set.
        assert_eq!(
            decode(&[VERSION, 0, 0x7f, 0, 0], MAX),
            Err(WireError::UnknownVariant("pastry"))
        );
    }

    #[test]
    fn a_batch_keeps_its_messages_in_order() {
        let messages = vec![
            Message::RouteAck {
                origin: NodeId::from_u128(1),
                id: 7,
                done: true,
            },
            Message::RootAnswer {
                id: 7,
                key: Key::from_u128(9),
                leaf_set: vec![peer(3)],
            },
        ];
        let frame = encode(&Body::PastryBatch(messages.clone())).unwrap();
        assert_eq!(decode(&frame, MAX), Ok(Body::PastryBatch(messages)));
    }

    #[test]
    fn a_batch_of_too_many_messages_is_malformed() {
        let ack = Message::ProofWanted { id: 1 };
        let full = encode(&Body::PastryBatch(vec![ack.clone(); MAX_PASTRY_BATCH])).unwrap();
        assert!(decode(&full, MAX).is_ok());
        let over = encode(&Body::PastryBatch(vec![ack; MAX_PASTRY_BATCH + 1])).unwrap();
        assert!(matches!(
            decode(&over, MAX),
            Err(WireError::Malformed(why)) if why.contains("pastry batch of 65 messages")
        ));
    }

    #[test]
    fn oversized_frames_are_rejected_both_ways() {
        let body = Body::Direct {
            payload: vec![0; 100].into(),
        };
        let frame = encode(&body).unwrap();
        assert_eq!(
            decode(&frame, 50),
            Err(WireError::Oversized {
                len: frame.len(),
                max: 50
            })
        );
        assert!(matches!(
            encode_bounded(&body, 50),
            Err(WireError::Oversized { max: 50, .. })
        ));
        assert_eq!(encode_bounded(&body, frame.len()).unwrap(), frame);
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut frame = encode(&Body::Pong { nonce: 3 }).unwrap().to_vec();
        frame.push(0);
        assert_eq!(decode(&frame, MAX), Err(WireError::TrailingBytes(1)));
    }

    #[test]
    fn varint_index_overflow_is_malformed() {
        assert!(matches!(
            decode(&[VERSION, 0xff, 0xff, 0xff, 0xff, 0x7f], MAX),
            Err(WireError::Malformed(_))
        ));
        assert_eq!(
            decode(&[VERSION, 0xff, 0xff], MAX),
            Err(WireError::Truncated)
        );
    }

    #[test]
    fn routed_message_keeps_key_origin_and_hops() {
        let body = Body::Pastry(Message::Route {
            id: 42,
            key: Key::from_name("room:lobby"),
            origin: peer(9),
            hops: 3,
            avoid: vec![peer(4).id],
            payload: b"hi".to_vec().into(),
            proof: Some(Box::new(crate::pastry::OriginProof {
                public_key: [7; 32],
                signature: [8; 64],
            })),
        });
        let frame = encode(&body).unwrap();
        assert_eq!(decode(&frame, MAX).unwrap(), body);
    }

    proptest! {
        #[test]
        fn every_body_round_trips(body in any_body()) {
            let frame = encode(&body).unwrap();
            // The kind index is below KINDS and named consistently (catches a new variant
            // added without updating KINDS and the names).
            prop_assert!(u32::from(frame[1]) < Body::KINDS);
            prop_assert_eq!(kind_name_of(u32::from(frame[1])), body.kind_name());
            prop_assert_eq!(decode(&frame, MAX).unwrap(), body);
        }

        #[test]
        fn every_truncation_is_an_error_not_a_panic(body in any_body(), cut in any::<prop::sample::Index>()) {
            let frame = encode(&body).unwrap();
            let cut = cut.index(frame.len());
            // Every strict prefix fails to decode (postcard needs the whole body).
            prop_assert!(decode(&frame[..cut], MAX).is_err());
        }
    }

    proptest! {
        // The decoder's fuzz target: many random inputs, some framed like real frames.
        #![proptest_config(ProptestConfig::with_cases(20_000))]
        #[test]
        fn fuzz_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes, MAX);
            let mut framed = vec![VERSION];
            framed.extend_from_slice(&bytes);
            if let Ok(body) = decode(&framed, MAX) {
                // Whatever decodes survives a re-encode unchanged.
                let again = encode(&body).unwrap();
                prop_assert_eq!(decode(&again, MAX).unwrap(), body);
            }
        }

        #[test]
        fn fuzz_mutated_frames_never_panic(body in any_body(), flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
            let mut frame = encode(&body).unwrap().to_vec();
            for (at, value) in flips {
                let at = at.index(frame.len());
                frame[at] = value;
            }
            let _ = decode(&frame, MAX);
        }
    }
}
