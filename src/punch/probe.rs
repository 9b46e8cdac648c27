//! Probes: the small datagrams that open NAT mappings and test a direct path, sent from the
//! node's own UDP socket (the one quinn uses) and taken out of the stream before quinn sees it.
//!
//! Layout (25 bytes): [`MAGIC`] (8), kind (1: ping, 2: pong), token (8, big-endian), tx id (8).
//! The magic's first byte, 0xff, marks a QUIC long header, and its next four bytes would be the
//! version, `WndP`, which no QUIC version uses: a real QUIC datagram never starts with it.

/// The first bytes of every probe.
pub(crate) const MAGIC: [u8; 8] = *b"\xffWndPnch";

/// A probe's size on the wire.
pub(crate) const LEN: usize = 25;

/// What a probe asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// "Are you there?" Answered with a pong that echoes the token and tx id.
    Ping,
    /// The answer to a ping.
    Pong,
}

/// One probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Probe {
    pub(crate) kind: Kind,
    /// The token the *receiver of the ping* issued over the relayed link: it proves the ping
    /// comes from the peer that was told it. A pong echoes it.
    pub(crate) token: u64,
    /// Matches a pong to its ping.
    pub(crate) tx: u64,
}

impl Probe {
    /// The probe's bytes.
    pub(crate) fn encode(&self) -> [u8; LEN] {
        let mut out = [0; LEN];
        out[..8].copy_from_slice(&MAGIC);
        out[8] = match self.kind {
            Kind::Ping => 1,
            Kind::Pong => 2,
        };
        out[9..17].copy_from_slice(&self.token.to_be_bytes());
        out[17..25].copy_from_slice(&self.tx.to_be_bytes());
        out
    }

    /// Whether `datagram` is a probe (well formed or not): it is then never handed to quinn.
    pub(crate) fn is_probe(datagram: &[u8]) -> bool {
        datagram.starts_with(&MAGIC)
    }

    /// The probe in `datagram`, or `None` if it is not a well-formed one.
    pub(crate) fn decode(datagram: &[u8]) -> Option<Self> {
        if datagram.len() != LEN || !Self::is_probe(datagram) {
            return None;
        }
        let kind = match datagram[8] {
            1 => Kind::Ping,
            2 => Kind::Pong,
            _ => return None,
        };
        let word = |at: usize| {
            let mut bytes = [0; 8];
            bytes.copy_from_slice(&datagram[at..at + 8]);
            u64::from_be_bytes(bytes)
        };
        Some(Self {
            kind,
            token: word(9),
            tx: word(17),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_survives_its_encoding() {
        for kind in [Kind::Ping, Kind::Pong] {
            let probe = Probe {
                kind,
                token: 0x0102_0304_0506_0708,
                tx: u64::MAX,
            };
            assert_eq!(Probe::decode(&probe.encode()), Some(probe));
        }
    }

    #[test]
    fn malformed_probes_are_recognised_but_not_decoded() {
        let mut bytes = Probe {
            kind: Kind::Ping,
            token: 1,
            tx: 2,
        }
        .encode();
        assert!(Probe::decode(&bytes[..LEN - 1]).is_none());
        bytes[8] = 7;
        assert!(Probe::is_probe(&bytes));
        assert!(Probe::decode(&bytes).is_none());
    }

    #[test]
    fn quic_packets_are_not_probes() {
        // A QUIC v1 long header (Initial) and a short header.
        let initial = [0xc3, 0, 0, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8];
        let short = [0x43, 0xff, b'W', b'n', b'd', b'P', b'n', b'c', b'h'];
        assert!(!Probe::is_probe(&initial));
        assert!(!Probe::is_probe(&short));
    }
}
