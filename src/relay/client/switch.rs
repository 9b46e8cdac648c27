//! Turning private or public while the node runs: what [`Relays`] does when the node's mode
//! follows a new reachability verdict (the decision is `reach::verdict`, the runtime that acts
//! on it `node/mode.rs`).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info};

use super::{lock, Relays, CANDIDATE_DIAL, CLOSE_LINGER};
use crate::id::NodeId;
use crate::relay::{is_synthetic, synthetic_addr, unmap};

impl Relays {
    /// Turns this node private: it advertises its synthetic address to the relays it
    /// connects through, and it homes on relays (its configured and bootstrap addresses, then the public peers
    /// it is linked to), publishing a record that names them. Waits at most `wait` for the
    /// first home.
    pub(crate) async fn go_private(
        self: &Arc<Self>,
        wait: Duration,
    ) -> Result<(), crate::node::NodeError> {
        // The socket's NAT-like filter stays off: the network already keeps dials out, and
        // the dial-backs that find the node reachable again must get through.
        self.private.store(true, Ordering::SeqCst);
        if let Some(transport) = self.transport.get() {
            transport.forget_failed_dials();
        }
        *lock(&self.advertised_addr) = Some(synthetic_addr(self.me));
        info!("turning private: homing on relays");
        self.start_homing();
        self.home_lost.notify_one();
        self.wait_homed(wait).await
    }

    /// Turns this node public at `addr`: it signs a direct record (no relays, the next
    /// sequence number) that replaces its relayed one at every linked peer, ends its home
    /// streams, and moves each link that runs through a relay onto a new connection dialled
    /// from here, so that the peer sees this node at `addr` (directly, or as the address a
    /// relayed dial to a private peer carries).
    pub(crate) async fn go_public(self: &Arc<Self>, addr: SocketAddr) {
        self.private.store(false, Ordering::SeqCst);
        self.paths.set_private(false);
        *lock(&self.advertised_addr) = Some(addr);
        info!(%addr, "turning public: withdrawing the relay record");
        self.sign_and_send(Vec::new());
        lock(&self.homes).clear();
        for (_, stop) in lock(&self.home_stops).drain() {
            stop.notify_one();
        }
        // The homing loop sees the node public and ends.
        self.home_lost.notify_one();
        let Some(transport) = self.transport.get().cloned() else {
            return;
        };
        // The dials that failed while the node was private (a firewall in front of it, for
        // one) would hold the re-dials below back for their back-off, and each would fall
        // back to the relayed link it is meant to replace.
        transport.forget_failed_dials();
        let relayed: Vec<(NodeId, SocketAddr)> = {
            let claimed = lock(&self.claimed);
            transport
                .linked_peers()
                .into_iter()
                .filter(|link| is_synthetic(unmap(link.addr)))
                .map(|link| {
                    let dial = claimed.get(&link.peer).copied().unwrap_or(link.addr);
                    (link.peer, dial)
                })
                .collect()
        };
        for (peer, dial) in relayed {
            let session = lock(&self.sessions)
                .get(&peer)
                .map(|(_, stop)| stop.clone());
            transport.close(peer).await;
            let transport = transport.clone();
            tokio::spawn(async move {
                // The old session carries the close; the new connection needs no session
                // if the peer is public.
                let redial =
                    tokio::time::timeout(CANDIDATE_DIAL, transport.connect(dial, Some(peer)));
                let result = redial.await;
                debug!(%peer, %dial, ?result, "dialled a relayed peer again");
                tokio::time::sleep(CLOSE_LINGER).await;
                if let Some(stop) = session {
                    stop.stop();
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::mesh::unix_ms_now;
    use crate::relay::{Paths, RelayConfig, RelayEntry, RelayRecord, RelayRecordError};

    fn holder() -> Relays {
        let (paths, _wanted) = Paths::new();
        Relays::new(Identity::generate(), &RelayConfig::default(), paths)
    }

    #[test]
    fn a_direct_record_withdraws_the_relayed_one_and_neither_an_older_nor_a_forged_one_brings_it_back(
    ) {
        let holder = holder();
        let node = Identity::generate();
        let id = node.node_id();
        let own_addr: SocketAddr = "198.18.0.13:7000".parse().unwrap();
        let relay = RelayEntry {
            id: Identity::generate().node_id(),
            addr: "198.18.0.10:7000".parse().unwrap(),
        };
        let expires = unix_ms_now() + 60_000;
        let relayed = RelayRecord::new(&node, vec![relay], 10, expires).sign(&node);
        // A first relayed record: the node is reached at its synthetic address, and the
        // holder's core is told to measure it there.
        assert_eq!(
            holder.on_record(id, &relayed.encode()),
            Ok(Some((id, true)))
        );
        assert_eq!(holder.dialable(id, own_addr), synthetic_addr(id));
        assert_eq!(holder.status().records, 1);

        // The node turned public: its direct record (the next sequence number) replaces it.
        let direct = RelayRecord::new(&node, Vec::new(), 11, expires).sign(&node);
        assert_eq!(
            holder.on_record(id, &direct.encode()),
            Ok(Some((id, false)))
        );
        assert_eq!(holder.dialable(id, own_addr), own_addr);
        assert_eq!(holder.status().records, 0);
        // It is what the holder passes on and answers, so it withdraws the old one elsewhere.
        assert_eq!(holder.record_for(id), Some(direct.encode()));

        // The old record arriving again (a slow peer passing it on) changes nothing.
        assert_eq!(holder.on_record(id, &relayed.encode()), Ok(None));
        assert_eq!(holder.dialable(id, own_addr), own_addr);

        // Nor does a relayed record with a higher number that the node did not sign.
        let forger = Identity::generate();
        let forged = RelayRecord::new(&node, vec![relay], 12, expires).sign(&forger);
        assert_eq!(
            holder.on_record(forger.node_id(), &forged.encode()),
            Err(RelayRecordError::BadSignature(id))
        );
        assert_eq!(holder.dialable(id, own_addr), own_addr);
        assert_eq!(holder.record_for(id), Some(direct.encode()));

        // Turning private again takes a newer relayed record, which is believed.
        let again = RelayRecord::new(&node, vec![relay], 13, expires).sign(&node);
        assert_eq!(holder.on_record(id, &again.encode()), Ok(Some((id, true))));
        assert_eq!(holder.dialable(id, own_addr), synthetic_addr(id));
    }
}
