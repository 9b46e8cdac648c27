//! The envelope the node runtime writes around every routed and direct payload it sends: the
//! payload's [`PayloadKind`] as a varint (LEB128, two bytes for the registered kinds), then the
//! payload's bytes.
//!
//! ```text
//! routed:  Body::Pastry(Message::Route { .., payload: [kind varint][bytes] })
//! direct:  Body::Direct { payload: [kind varint][bytes] }
//! ```
//!
//! The kind is set by the runtime, never by the caller's bytes: [`Node::route`] and
//! [`Node::send`] always write [`PayloadKind::Application`], so no application payload can be
//! taken for a service-mesh message whatever its bytes, and an application cannot forge one.
//! The receiving runtime opens the envelope: the application's payloads reach it without the
//! envelope, other kinds go to the layer of Wendy that owns them, and a kind this build does
//! not know is [`WireError::UnknownPayloadKind`] (that message alone is dropped). A relay does
//! not open the envelope except to show an application payload to the forward hook.
//!
//! The envelope lives inside the opaque payload of the Pastry core, so the core and the
//! simulator neither see nor count it.
//!
//! [`Node::route`]: crate::node::Node::route
//! [`Node::send`]: crate::node::Node::send

use bytes::Bytes;

use super::codes::PayloadKind;
use super::{read_varint_u32, WireError};

/// The longest kind header [`wrap`] writes (a `u32` varint).
const MAX_HEADER: usize = 5;

/// The payload in its envelope: `kind`'s varint, then `payload`.
///
/// ```
/// use wendy::wire::{envelope, PayloadKind};
/// let wrapped = envelope::wrap(PayloadKind::Application, b"hi");
/// assert_eq!(envelope::open(wrapped)?.1, &b"hi"[..]);
/// # Ok::<(), wendy::wire::WireError>(())
/// ```
pub fn wrap(kind: PayloadKind, payload: &[u8]) -> Bytes {
    let mut wrapped = Vec::with_capacity(MAX_HEADER + payload.len());
    let mut value = kind.value();
    loop {
        // Low 7 bits first, the high bit set on every byte but the last (LEB128, as postcard).
        let low = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            wrapped.push(low);
            break;
        }
        wrapped.push(low | 0x80);
    }
    wrapped.extend_from_slice(payload);
    Bytes::from(wrapped)
}

/// The kind of a wrapped payload and the length of its header, without touching the payload.
pub fn peek(wrapped: &[u8]) -> Result<(PayloadKind, usize), WireError> {
    let (value, len) = read_varint_u32(wrapped, "payload kind")?;
    let kind =
        PayloadKind::from_u64(u64::from(value)).ok_or(WireError::UnknownPayloadKind(value))?;
    Ok((kind, len))
}

/// Takes a payload out of its envelope: its kind and its bytes (a view of the same buffer).
pub fn open(wrapped: Bytes) -> Result<(PayloadKind, Bytes), WireError> {
    let (kind, header) = peek(&wrapped)?;
    Ok((kind, wrapped.slice(header..)))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_registered_kinds_take_two_bytes_and_open_to_themselves() {
        for &kind in PayloadKind::ALL {
            let wrapped = wrap(kind, b"payload");
            assert_eq!(wrapped.len(), 2 + 7);
            assert_eq!(peek(&wrapped), Ok((kind, 2)));
            assert_eq!(open(wrapped), Ok((kind, Bytes::from_static(b"payload"))));
        }
        // 0x300 = 0b11_0000000: low seven bits 0 with the continuation bit, then 6.
        assert_eq!(wrap(PayloadKind::Application, b""), &[0x80, 0x06][..]);
    }

    #[test]
    fn the_old_mesh_magic_is_just_application_bytes() {
        let old_magic = [0xFF, b'w', b'm', b'e', b's', b'h', b'/', b'1', 0, 1, 2];
        let wrapped = wrap(PayloadKind::Application, &old_magic);
        assert_eq!(
            open(wrapped),
            Ok((PayloadKind::Application, Bytes::copy_from_slice(&old_magic)))
        );
        // Unwrapped, the same bytes are no envelope Wendy knows.
        assert!(open(Bytes::copy_from_slice(&old_magic)).is_err());
    }

    #[test]
    fn an_unknown_kind_is_its_own_error_and_a_missing_one_is_truncated() {
        // 0x3ff is in the range but unregistered; 0x7f is outside it.
        assert_eq!(
            open(Bytes::from(vec![0xff, 0x07, 1])),
            Err(WireError::UnknownPayloadKind(0x3ff))
        );
        assert_eq!(
            open(Bytes::from(vec![0x7f])),
            Err(WireError::UnknownPayloadKind(0x7f))
        );
        assert_eq!(open(Bytes::new()), Err(WireError::Truncated));
        assert_eq!(open(Bytes::from(vec![0x80])), Err(WireError::Truncated));
        assert!(matches!(
            open(Bytes::from(vec![0xff, 0xff, 0xff, 0xff, 0x7f])),
            Err(WireError::Malformed(_))
        ));
    }

    proptest! {
        #[test]
        fn every_payload_survives_its_envelope(payload in proptest::collection::vec(any::<u8>(), 0..256), mesh: bool) {
            let kind = if mesh { PayloadKind::Mesh } else { PayloadKind::Application };
            prop_assert_eq!(open(wrap(kind, &payload)), Ok((kind, Bytes::from(payload))));
        }

        #[test]
        fn opening_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            if let Ok((kind, payload)) = open(Bytes::from(bytes.clone())) {
                prop_assert_eq!(wrap(kind, &payload), bytes);
            }
        }
    }
}
