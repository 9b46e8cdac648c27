//! Node identifiers and application keys: points on Pastry's 128-bit ring.
//!
//! This module is pure arithmetic. It owns the id space (128 bits, read as 32 base-16 digits,
//! most significant first), ring distance with wrap-around, shared-prefix length, and the one
//! rule every other module uses to decide which of two ids is closer to a key. It knows nothing
//! of key pairs, certificates or the network.
//!
//! # The tie rule
//!
//! Two distinct ids can be equally distant from a key only when they sit on opposite sides of
//! it (`key - d` and `key + d`). Wendy then prefers the id met first walking **clockwise**
//! (increasing, wrapping) from the key: `key + d`. [`Key::cmp_closeness`] implements this and
//! is the only closeness comparison in the code base, so routing, the leaf set, the simulator
//! and the test oracles all agree on which node is the root of a key.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// Number of bits in an id.
pub const ID_BITS: u32 = 128;
/// Bits per digit (Pastry's `b`).
pub const DIGIT_BITS: u32 = 4;
/// Number of base-16 digits in an id (32).
pub const DIGITS: usize = (ID_BITS / DIGIT_BITS) as usize;
/// Number of distinct digit values (16).
pub const DIGIT_VALUES: usize = 1 << DIGIT_BITS;

/// Why a hexadecimal id could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseIdError {
    /// The text was not exactly 32 hex digits long.
    #[error("an id is 32 hex digits, got {0} characters")]
    Length(usize),
    /// A character outside `0-9a-fA-F`.
    #[error("invalid hex digit {character:?} at position {position}")]
    Digit {
        /// The offending character.
        character: char,
        /// Its index in the text.
        position: usize,
    },
}

macro_rules! ring_point {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        pub struct $name(u128);

        impl $name {
            /// The id whose 16 big-endian bytes are `bytes`.
            pub const fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(u128::from_be_bytes(bytes))
            }

            /// The id's 16 big-endian bytes.
            pub const fn to_bytes(self) -> [u8; 16] {
                self.0.to_be_bytes()
            }

            /// The id as an unsigned integer (the ring position).
            pub const fn from_u128(value: u128) -> Self {
                Self(value)
            }

            /// The id as an unsigned integer (the ring position).
            pub const fn as_u128(self) -> u128 {
                self.0
            }

            /// Digit `index` (0 = most significant), a value in `0..16`.
            ///
            /// # Panics
            /// If `index >= 32`; digit positions are always derived from prefix lengths `< 32`.
            pub const fn digit(self, index: usize) -> u8 {
                assert!(index < DIGITS, "digit index out of range");
                ((self.0 >> (ID_BITS - DIGIT_BITS * (index as u32 + 1))) & 0xf) as u8
            }

            /// The id with digit `index` replaced by `value` (low 4 bits).
            pub const fn with_digit(self, index: usize, value: u8) -> Self {
                assert!(index < DIGITS, "digit index out of range");
                let shift = ID_BITS - DIGIT_BITS * (index as u32 + 1);
                Self((self.0 & !(0xf << shift)) | (((value & 0xf) as u128) << shift))
            }

            /// Number of leading digits shared with `other`, in `0..=32`.
            pub fn shared_prefix_len(self, other: impl Into<u128>) -> usize {
                let x = self.0 ^ other.into();
                (x.leading_zeros() / DIGIT_BITS) as usize
            }

            /// Distance around the ring to `other`, the shorter way round (wraps across zero).
            pub fn ring_distance(self, other: impl Into<u128>) -> u128 {
                let other = other.into();
                other.wrapping_sub(self.0).min(self.0.wrapping_sub(other))
            }

            /// Distance walking clockwise (increasing ids, wrapping) from `self` to `other`.
            pub fn clockwise_distance(self, other: impl Into<u128>) -> u128 {
                other.into().wrapping_sub(self.0)
            }

            /// The ring's "less than": whether `other` is reached sooner walking clockwise from
            /// `self` than walking counter-clockwise, so `ff..ff` precedes `00..01` across zero.
            /// Exactly opposite points fall back to numeric order, so of two distinct ids
            /// exactly one precedes the other.
            pub fn precedes(self, other: impl Into<u128>) -> bool {
                let other = other.into();
                let d = other.wrapping_sub(self.0);
                d != 0 && (d < HALF_RING || (d == HALF_RING && self.0 < other))
            }
        }

        impl From<$name> for u128 {
            fn from(id: $name) -> u128 {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:032x}", self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // Short form for logs: the first 8 digits identify a node in any realistic mesh.
                write!(f, "{}({:08x})", stringify!($name), (self.0 >> 96) as u32)
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_hex(s).map(Self)
            }
        }
    };
}

const HALF_RING: u128 = 1 << 127;

ring_point!(
    /// A node's identifier: the first 16 bytes of `blake3(ed25519 public key)`.
    ///
    /// Shown as 32 lowercase hex digits; [`fmt::Debug`] shows only the first 8.
    ///
    /// ```
    /// use wendy::id::NodeId;
    /// let id: NodeId = "0123456789abcdef0123456789abcdef".parse().unwrap();
    /// assert_eq!(id.digit(1), 1);
    /// assert_eq!(id.to_string(), "0123456789abcdef0123456789abcdef");
    /// ```
    NodeId
);

ring_point!(
    /// An application key: a point on the same ring as [`NodeId`]s.
    ///
    /// A message routed to a key is delivered at the live node whose id is closest to it
    /// (see the module docs for the tie rule).
    Key
);

impl NodeId {
    /// This node id as a key (the same ring point).
    pub const fn to_key(self) -> Key {
        Key(self.0)
    }
}

impl From<NodeId> for Key {
    fn from(id: NodeId) -> Self {
        id.to_key()
    }
}

impl Key {
    /// The key of an application name: the first 16 bytes of `blake3(name)`.
    ///
    /// ```
    /// use wendy::id::Key;
    /// assert_eq!(Key::from_name("room:lobby"), Key::from_name("room:lobby"));
    /// assert_ne!(Key::from_name("room:lobby"), Key::from_name("room:other"));
    /// ```
    pub fn from_name(name: &str) -> Self {
        Self::from_bytes(first_16(blake3::hash(name.as_bytes()).as_bytes()))
    }

    /// The node id at this ring point.
    pub const fn to_node_id(self) -> NodeId {
        NodeId(self.0)
    }

    /// Orders two node ids by closeness to this key: `Less` means `a` is closer.
    ///
    /// Closer means a smaller [`ring_distance`](Self::ring_distance); between two distinct
    /// ids at the same distance (one each side of the key) the one clockwise from the key wins.
    /// Equal only when `a == b`.
    pub fn cmp_closeness(self, a: NodeId, b: NodeId) -> Ordering {
        self.ring_distance(a)
            .cmp(&self.ring_distance(b))
            .then_with(|| self.clockwise_distance(a).cmp(&self.clockwise_distance(b)))
    }

    /// Whether `a` is strictly closer to this key than `b` (see [`cmp_closeness`](Self::cmp_closeness)).
    pub fn is_closer(self, a: NodeId, b: NodeId) -> bool {
        self.cmp_closeness(a, b) == Ordering::Less
    }

    /// The id in `ids` closest to this key, or `None` if `ids` is empty.
    pub fn closest<I: IntoIterator<Item = NodeId>>(self, ids: I) -> Option<NodeId> {
        ids.into_iter().min_by(|a, b| self.cmp_closeness(*a, *b))
    }
}

impl NodeId {
    /// The node id of an ed25519 public key: the first 16 bytes of `blake3(key)`.
    pub fn from_public_key(public_key: &[u8; 32]) -> Self {
        Self::from_bytes(first_16(blake3::hash(public_key).as_bytes()))
    }
}

fn first_16(digest: &[u8; 32]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

fn parse_hex(s: &str) -> Result<u128, ParseIdError> {
    if s.len() != DIGITS {
        return Err(ParseIdError::Length(s.chars().count()));
    }
    let mut value = 0u128;
    for (position, character) in s.chars().enumerate() {
        let digit = character.to_digit(16).ok_or(ParseIdError::Digit {
            character,
            position,
        })?;
        value = (value << DIGIT_BITS) | u128::from(digit);
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(s: &str) -> NodeId {
        s.parse().unwrap()
    }

    #[test]
    fn hex_round_trip_and_typed_errors() {
        let text = "00ff00ff00ff00ff00ff00ff00ff00fe";
        assert_eq!(id(text).to_string(), text);
        assert_eq!(
            "00FF00FF00FF00FF00FF00FF00FF00FE"
                .parse::<NodeId>()
                .unwrap(),
            id(text)
        );
        assert_eq!("abc".parse::<NodeId>(), Err(ParseIdError::Length(3)));
        assert_eq!(
            "0123456789abcdef0123456789abcdeg".parse::<Key>(),
            Err(ParseIdError::Digit {
                character: 'g',
                position: 31
            })
        );
        // A multi-byte character must not be mistaken for a valid length.
        assert!("é123456789abcdef0123456789abcde".parse::<NodeId>().is_err());
    }

    #[test]
    fn digits_are_most_significant_first() {
        let n = id("0123456789abcdef0123456789abcdef");
        for i in 0..DIGITS {
            assert_eq!(usize::from(n.digit(i)), i % 16, "digit {i}");
        }
        assert_eq!(
            n.with_digit(0, 0xf).to_string(),
            "f123456789abcdef0123456789abcdef"
        );
        assert_eq!(
            n.with_digit(31, 0).to_string(),
            "0123456789abcdef0123456789abcde0"
        );
    }

    #[test]
    fn wrap_around_distance() {
        // Go Wendy regression: distance across zero is the short way round.
        let low = id("00000000000000000000000000000001");
        let high = id("ffffffffffffffffffffffffffffffff");
        assert_eq!(low.ring_distance(high), 2);
        assert_eq!(high.ring_distance(low), 2);
        assert_eq!(high.clockwise_distance(low), 2);
        assert_eq!(low.clockwise_distance(high), u128::MAX - 1);
        let a = id("80000000000000000000000000000000");
        let zero = id("00000000000000000000000000000000");
        assert_eq!(a.ring_distance(zero), 1 << 127);
    }

    #[test]
    fn precedes_across_zero() {
        // Go Wendy regression: "less" must follow the ring, not the integers, near zero.
        let low = id("00000000000000000000000000000001");
        let high = id("ffffffffffffffffffffffffffffffff");
        assert!(high.precedes(low));
        assert!(!low.precedes(high));
        assert!(!low.precedes(low));
        let a = id("10000000000000000000000000000000");
        let b = id("20000000000000000000000000000000");
        assert!(a.precedes(b) && !b.precedes(a));
        // Exactly opposite: numeric order decides, and only one way.
        let opposite = id("90000000000000000000000000000000");
        assert!(a.precedes(opposite) && !opposite.precedes(a));
    }

    #[test]
    fn prefix_length_at_every_digit_position() {
        // Go Wendy regression: the original miscounted odd positions (it compared bytes).
        let base = id("0123456789abcdef0123456789abcdef");
        assert_eq!(base.shared_prefix_len(base), DIGITS);
        for pos in 0..DIGITS {
            let flipped = base.with_digit(pos, base.digit(pos) ^ 0x1);
            assert_eq!(
                base.shared_prefix_len(flipped),
                pos,
                "differs at digit {pos}"
            );
            let high_bit = base.with_digit(pos, base.digit(pos) ^ 0x8);
            assert_eq!(
                base.shared_prefix_len(high_bit),
                pos,
                "high bit at digit {pos}"
            );
        }
    }

    #[test]
    fn tie_goes_clockwise() {
        let key = Key::from_u128(100);
        let below = NodeId::from_u128(90);
        let above = NodeId::from_u128(110);
        assert_eq!(key.cmp_closeness(above, below), Ordering::Less);
        assert_eq!(key.cmp_closeness(below, above), Ordering::Greater);
        assert_eq!(key.closest([below, above]), Some(above));
        // Across zero.
        let key = Key::from_u128(0);
        let below = NodeId::from_u128(u128::MAX - 4);
        let above = NodeId::from_u128(5);
        assert_eq!(key.closest([below, above]), Some(above));
        assert!(key.is_closer(NodeId::from_u128(u128::MAX), above));
    }

    #[test]
    fn names_and_keys_hash_with_blake3() {
        let expected = blake3::hash(b"room:lobby");
        assert_eq!(
            Key::from_name("room:lobby").to_bytes(),
            expected.as_bytes()[..16]
        );
        let pk = [7u8; 32];
        assert_eq!(
            NodeId::from_public_key(&pk).to_bytes(),
            blake3::hash(&pk).as_bytes()[..16]
        );
    }

    fn any_id() -> impl Strategy<Value = NodeId> {
        any::<u128>().prop_map(NodeId::from_u128)
    }

    proptest! {
        #[test]
        fn distance_is_symmetric(a in any_id(), b in any_id()) {
            prop_assert_eq!(a.ring_distance(b), b.ring_distance(a));
            prop_assert!(a.ring_distance(b) <= HALF_RING);
            prop_assert_eq!(a.ring_distance(b) == 0, a == b);
        }

        #[test]
        fn distance_is_the_shorter_way_round(a in any_id(), b in any_id()) {
            let cw = a.clockwise_distance(b);
            let ccw = b.clockwise_distance(a);
            prop_assert_eq!(cw.wrapping_add(ccw), 0);
            prop_assert_eq!(a.ring_distance(b), cw.min(ccw));
        }

        #[test]
        fn triangle_inequality_holds_with_wrap(a in any_id(), b in any_id(), c in any_id()) {
            let ab = a.ring_distance(b);
            let bc = b.ring_distance(c);
            prop_assert!(a.ring_distance(c) <= ab.saturating_add(bc));
        }

        #[test]
        fn prefix_len_matches_digits(a in any_id(), b in any_id()) {
            let p = a.shared_prefix_len(b);
            for i in 0..p {
                prop_assert_eq!(a.digit(i), b.digit(i));
            }
            if p < DIGITS {
                prop_assert_ne!(a.digit(p), b.digit(p));
            }
        }

        #[test]
        fn precedes_is_antisymmetric(a in any_id(), b in any_id()) {
            prop_assume!(a != b);
            prop_assert!(a.precedes(b) ^ b.precedes(a));
        }

        #[test]
        fn closeness_is_a_strict_total_order(k in any::<u128>(), a in any_id(), b in any_id()) {
            let key = Key::from_u128(k);
            prop_assert_eq!(key.cmp_closeness(a, b) == Ordering::Equal, a == b);
            prop_assert_eq!(key.cmp_closeness(a, b), key.cmp_closeness(b, a).reverse());
        }

        #[test]
        fn hex_round_trips(a in any_id()) {
            prop_assert_eq!(a.to_string().parse::<NodeId>().unwrap(), a);
        }
    }
}
