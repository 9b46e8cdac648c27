//! The frames that coordinate a hole punch, carried as [`Body::Punch`](crate::wire::Body::Punch)
//! on the relayed link between the two nodes.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// At most this many candidate addresses in one frame; a frame with more is refused
/// ([`PunchError::TooManyAddrs`]).
pub const MAX_ADDRS: usize = 4;

/// One hole-punching frame. [`PunchMessage::Offer`] travels as a request on a bi stream of the
/// relayed link ([`Transport::request`](crate::transport::Transport::request)) and is answered
/// with [`PunchMessage::Ready`]; both ends start probing as soon as they have the other's frame.
///
/// Append new variants at the end only: the variant index is part of the encoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PunchMessage {
    /// "Let us go direct": the sender's probe token, its advertised address, and where it
    /// may be reached from outside (its observed addresses).
    Offer {
        /// Probes sent to the sender must carry it (it proves they come from the peer).
        token: u64,
        /// The address the sender advertises (synthetic for a private node).
        advertised: SocketAddr,
        /// Candidate addresses, at most [`MAX_ADDRS`].
        addrs: Vec<SocketAddr>,
    },
    /// The answer to an offer, with the answerer's token, advertised address and candidates.
    Ready {
        /// Probes sent to the answerer must carry it.
        token: u64,
        /// The address the answerer advertises.
        advertised: SocketAddr,
        /// Candidate addresses, at most [`MAX_ADDRS`].
        addrs: Vec<SocketAddr>,
    },
}

/// Why a punch frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PunchError {
    /// The frame names more candidate addresses than [`MAX_ADDRS`].
    #[error("too many candidate addresses: {0} (at most {MAX_ADDRS})")]
    TooManyAddrs(usize),
    /// A candidate is not a unicast address a peer could send to (unspecified, multicast,
    /// broadcast, synthetic, or port 0).
    #[error("unusable candidate address {0}")]
    BadAddr(SocketAddr),
    /// The peer offered while the link between us is not relayed, or too soon after its
    /// last offer.
    #[error("offer refused: {0}")]
    Refused(&'static str),
}

impl PunchMessage {
    /// The token, advertised address and candidates, checked: at most [`MAX_ADDRS`]
    /// candidates, each a unicast address with a port.
    pub fn checked(&self) -> Result<(u64, SocketAddr, &[SocketAddr]), PunchError> {
        let (Self::Offer {
            token,
            advertised,
            addrs,
        }
        | Self::Ready {
            token,
            advertised,
            addrs,
        }) = self;
        if addrs.len() > MAX_ADDRS {
            return Err(PunchError::TooManyAddrs(addrs.len()));
        }
        if let Some(bad) = addrs.iter().find(|addr| !usable(**addr)) {
            return Err(PunchError::BadAddr(*bad));
        }
        Ok((*token, *advertised, addrs))
    }
}

/// Whether `addr` is worth sending a probe to.
pub(crate) fn usable(addr: SocketAddr) -> bool {
    let addr = crate::relay::unmap(addr);
    let ip = addr.ip();
    let broadcast = match ip {
        std::net::IpAddr::V4(v4) => v4.is_broadcast(),
        std::net::IpAddr::V6(_) => false,
    };
    addr.port() != 0
        && !ip.is_unspecified()
        && !ip.is_multicast()
        && !broadcast
        && !crate::relay::is_synthetic(addr)
}

#[cfg(test)]
pub(crate) mod strategy {
    //! Proptest strategy for punch frames.
    use proptest::prelude::*;

    use super::PunchMessage;

    pub(crate) fn message() -> impl Strategy<Value = PunchMessage> {
        let addr = (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| std::net::SocketAddr::from((ip, port)));
        let addrs = proptest::collection::vec(addr.clone(), 0..6);
        prop_oneof![
            (any::<u64>(), addr.clone(), addrs.clone()).prop_map(|(token, advertised, addrs)| {
                PunchMessage::Offer {
                    token,
                    advertised,
                    addrs,
                }
            }),
            (any::<u64>(), addr, addrs).prop_map(|(token, advertised, addrs)| {
                PunchMessage::Ready {
                    token,
                    advertised,
                    addrs,
                }
            }),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(addrs: &[&str]) -> PunchMessage {
        PunchMessage::Offer {
            token: 9,
            advertised: "240.1.2.3:40000".parse().unwrap(),
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn a_frame_with_too_many_candidates_is_refused() {
        let many = offer(&[
            "1.2.3.4:1",
            "1.2.3.4:2",
            "1.2.3.4:3",
            "1.2.3.4:4",
            "1.2.3.4:5",
        ]);
        assert_eq!(many.checked().unwrap_err(), PunchError::TooManyAddrs(5));
        assert!(offer(&["1.2.3.4:1", "1.2.3.4:2"]).checked().is_ok());
    }

    #[test]
    fn candidates_that_no_probe_should_go_to_are_refused() {
        for bad in [
            "0.0.0.0:7000",
            "1.2.3.4:0",
            "224.0.0.1:7000",
            "255.255.255.255:7000",
            "240.0.0.9:7000",
        ] {
            assert_eq!(
                offer(&[bad]).checked().unwrap_err(),
                PunchError::BadAddr(bad.parse().unwrap()),
                "{bad}"
            );
        }
    }
}
