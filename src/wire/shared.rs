//! Payloads that cross a node without being copied.
//!
//! A routed message's payload is a [`Bytes`]. Decoded with [`decode_shared`], it is a view of
//! the frame it arrived in (the frame's buffer stays alive as long as the payload does); the
//! node's custody copy, the hedged copy and the delivery to the application share it; and
//! [`encode_chunks`] writes it out again as a chunk of its own, which QUIC takes without copying
//! (`SendStream::write_all_chunks`). So a hop copies a payload only where QUIC itself does (into
//! and out of its packets).
//!
//! The encoding is postcard's byte string, exactly as [`super::byte_buf`] writes a `Vec<u8>`:
//! sharing changes no byte on the wire.

use std::cell::RefCell;

use bytes::Bytes;
use serde::de::{Deserializer, Error, SeqAccess, Visitor};
use serde::Serializer;

use super::{decode, Body, WireError, VERSION};
use crate::pastry;

/// Payloads shorter than this are copied into the frame: below it, a chunk of its own costs
/// more than the copy it saves.
pub const SPLICE_MIN: usize = 1024;

thread_local! {
    /// The frame [`decode_shared`] is decoding on this thread: payloads inside it become views
    /// of it. `None` outside a shared decode, when payloads are copied.
    static SOURCE: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Decodes `frame` like [`decode`], with every shared payload inside it a view of `frame`'s
/// buffer instead of a copy.
pub fn decode_shared(frame: &Bytes, max_size: usize) -> Result<Body, WireError> {
    struct Restore(Option<Bytes>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            SOURCE.with(|source| *source.borrow_mut() = previous);
        }
    }
    let previous = SOURCE.with(|source| source.borrow_mut().replace(frame.clone()));
    let _restore = Restore(previous);
    decode(frame, max_size)
}

/// `bytes` as a view of the frame being decoded when it lies inside it, else a copy.
fn share(bytes: &[u8]) -> Bytes {
    SOURCE.with(|source| {
        let source = source.borrow();
        match source.as_ref() {
            Some(frame) if within(frame, bytes) => frame.slice_ref(bytes),
            _ => Bytes::copy_from_slice(bytes),
        }
    })
}

/// Whether `part` lies inside `whole`'s memory.
fn within(whole: &[u8], part: &[u8]) -> bool {
    let start = whole.as_ptr() as usize;
    let at = part.as_ptr() as usize;
    at >= start && at + part.len() <= start + whole.len()
}

/// Serialises `bytes` as a byte string.
pub fn serialize<S: Serializer>(bytes: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(bytes)
}

/// Deserialises a byte string: a view of the frame under [`decode_shared`], else a copy.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
    deserializer.deserialize_bytes(SharedVisitor)
}

struct SharedVisitor;

impl<'de> Visitor<'de> for SharedVisitor {
    type Value = Bytes;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("a byte string")
    }

    fn visit_borrowed_bytes<E: Error>(self, bytes: &'de [u8]) -> Result<Self::Value, E> {
        Ok(share(bytes))
    }

    fn visit_bytes<E: Error>(self, bytes: &[u8]) -> Result<Self::Value, E> {
        Ok(Bytes::copy_from_slice(bytes))
    }

    fn visit_byte_buf<E: Error>(self, bytes: Vec<u8>) -> Result<Self::Value, E> {
        Ok(Bytes::from(bytes))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(byte) = seq.next_element()? {
            bytes.push(byte);
        }
        Ok(Bytes::from(bytes))
    }
}

/// A frame as the chunks to write in order: the encoded body, with a large shared payload left
/// in its own buffer between the bytes before and after it.
pub type Chunks = Vec<Bytes>;

/// Encodes `body` like [`super::encode_bounded`], as chunks: a routed payload of at least
/// [`SPLICE_MIN`] bytes is not copied but written as a chunk of its own.
pub fn encode_chunks(body: &Body, max_size: usize) -> Result<Chunks, WireError> {
    let splice = match body {
        Body::Pastry(pastry::Message::Route { payload, .. }) if payload.len() >= SPLICE_MIN => {
            Some(payload.clone())
        }
        _ => None,
    };
    let Some(splice) = splice else {
        return Ok(vec![super::encode_bounded(body, max_size)?]);
    };
    let mut head = Vec::with_capacity(256);
    head.push(VERSION);
    let flavor = Splicing {
        splice: Some(splice),
        current: head,
        chunks: Vec::with_capacity(3),
    };
    let chunks = postcard::serialize_with_flavor(body, flavor)
        .map_err(|error| WireError::Encode(error.to_string()))?;
    let len: usize = chunks.iter().map(Bytes::len).sum();
    if len > max_size {
        return Err(WireError::Oversized { len, max: max_size });
    }
    Ok(chunks)
}

/// A postcard output that copies everything but one payload, which it keeps as a chunk.
struct Splicing {
    /// The payload to keep whole, until postcard writes it.
    splice: Option<Bytes>,
    /// The bytes written since the last chunk.
    current: Vec<u8>,
    chunks: Chunks,
}

impl postcard::ser_flavors::Flavor for Splicing {
    type Output = Chunks;

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        // postcard writes a byte string's bytes in one call, from the `Bytes` itself: the same
        // memory and length identify it.
        let spliced = self
            .splice
            .take_if(|s| s.as_ptr() == data.as_ptr() && s.len() == data.len());
        match spliced {
            Some(payload) => {
                let before = std::mem::replace(&mut self.current, Vec::with_capacity(128));
                self.chunks.push(Bytes::from(before));
                self.chunks.push(payload);
            }
            None => self.current.extend_from_slice(data),
        }
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.current.push(data);
        Ok(())
    }

    fn finalize(mut self) -> postcard::Result<Chunks> {
        if !self.current.is_empty() {
            self.chunks.push(Bytes::from(self.current));
        }
        Ok(self.chunks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{Key, NodeId};
    use crate::pastry::{Message, PeerInfo};

    fn routed(payload: Bytes) -> Body {
        Body::Pastry(Message::Route {
            id: 7,
            key: Key::from_u128(42),
            origin: PeerInfo {
                id: NodeId::from_u128(9),
                addr: "127.0.0.1:4000".parse().unwrap(),
            },
            hops: 1,
            avoid: vec![NodeId::from_u128(3)],
            payload,
            proof: None,
        })
    }

    fn payload_of(body: &Body) -> &Bytes {
        match body {
            Body::Pastry(Message::Route { payload, .. }) => payload,
            other => panic!("not a routed message: {other:?}"),
        }
    }

    #[test]
    fn a_decoded_payload_is_a_view_of_its_frame_and_goes_out_as_its_own_chunk() {
        let body = routed(Bytes::from(vec![5u8; 4096]));
        let frame = super::super::encode(&body).unwrap();

        let decoded = decode_shared(&frame, 1 << 20).unwrap();
        assert_eq!(decoded, body);
        let payload = payload_of(&decoded);
        assert!(within(&frame, payload), "the payload was copied");

        let chunks = encode_chunks(&decoded, 1 << 20).unwrap();
        assert_eq!(chunks.len(), 3, "head, payload, tail");
        assert_eq!(
            chunks[1].as_ptr(),
            payload.as_ptr(),
            "the payload was copied"
        );
        assert_eq!(chunks.concat(), frame.to_vec(), "the chunks are the frame");
    }

    #[test]
    fn small_payloads_and_plain_decodes_copy() {
        let small = routed(Bytes::from(vec![1u8; SPLICE_MIN - 1]));
        let frame = super::super::encode(&small).unwrap();
        assert_eq!(encode_chunks(&small, 1 << 20).unwrap(), vec![frame.clone()]);

        let plain = decode(&frame, 1 << 20).unwrap();
        assert!(!within(&frame, payload_of(&plain)));
        // Outside `decode_shared`, and after it returned, nothing refers to an old frame.
        let shared = decode_shared(&frame, 1 << 20).unwrap();
        assert!(within(&frame, payload_of(&shared)));
        let again = decode(&frame, 1 << 20).unwrap();
        assert!(!within(&frame, payload_of(&again)));
    }

    #[test]
    fn spliced_frames_obey_the_size_bound() {
        let body = routed(Bytes::from(vec![0u8; 8192]));
        let len = super::super::encode(&body).unwrap().len();
        assert_eq!(
            encode_chunks(&body, len - 1),
            Err(WireError::Oversized { len, max: len - 1 })
        );
        assert_eq!(encode_chunks(&body, len).unwrap().concat().len(), len);
    }
}
