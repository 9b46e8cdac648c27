//! Failure accounts: when a node believes that a member it holds has failed.
//!
//! A node believes a failure it found itself (its probes went unanswered), or one that two
//! accounts sharing no node agree on. An account is a [`Message::NodeFailed`] from its sender
//! (who holds the node dead: the nodes `{sender}`), or a [`FailureClaim`] that a probe or its
//! reply passes on (`{sender, witness}`: the sender says the witness told it). An honest node
//! gives an account only of what it believes, so with one liar, two accounts that share no node
//! include one made wholly by honest nodes, resting on a belief formed earlier; the first
//! honest node to believe would need such an account from a node that believed before it. So
//! one lying peer alone never makes an honest node believe that a live node failed.
//!
//! Why two accounts instead of a probe per holder: the failed node's two neighbours each find
//! it dead and tell the holders on their own side (`membership::forget_dead`). A holder's new
//! leaf-set member, which replaces the failed one, sits on the failed node's other side and
//! was told by the other neighbour: the probe that admits it carries that account, so the
//! holders on both sides believe with the messages that repair their leaf sets. A holder that
//! gets no second account in time probes the node itself, as before.
//!
//! This module owns the accounts a pending probe collects ([`Doubt`]), the claims a node passes
//! on, and what follows a belief (filling the hole, telling who passed an account on); it must
//! not decide who is told of a failure first (`membership`) or when probes are sent
//! (`liveness`).

use crate::id::NodeId;

use super::liveness::ProbeKind;
use super::message::{FailureClaim, MAX_CLAIMS};
use super::state::Pastry;
use super::{LeafSet, Message, PeerInfo, Time};

/// Most accounts one doubt keeps (one per sender).
const MAX_ACCOUNTS: usize = 8;
/// Most live peers one doubt keeps as replacements.
const MAX_VOUCHED: usize = 8;
/// Most failures this node remembers having found or believed, to pass on.
const MAX_FAILED_LATELY: usize = 8;

/// What a node collected about a member it was told failed, while it waits for a second account
/// or its own probe.
#[derive(Debug, Clone, Default)]
pub(super) struct Doubt {
    /// One account per sender: `[sender, witness]` (the same node twice for the sender's own).
    pub(super) accounts: Vec<[NodeId; 2]>,
    /// Who sent us a notice: the news need not go back to them.
    pub(super) told: Vec<NodeId>,
    /// Peers that proved alive and active (their own probe or reply) and would join our leaf
    /// set once the doubted member is gone, with when we heard them.
    pub(super) vouched: Vec<(PeerInfo, Time)>,
}

impl Doubt {
    /// Records `sender`'s account naming `witness`. A sender's own account replaces one it
    /// passed on (it rests on fewer nodes).
    fn add(&mut self, sender: NodeId, witness: NodeId) {
        let account = [sender, witness];
        match self.accounts.iter().position(|a| a[0] == sender) {
            Some(index) if sender == witness => self.accounts[index] = account,
            Some(_) => {}
            None if self.accounts.len() < MAX_ACCOUNTS => self.accounts.push(account),
            None => {}
        }
    }

    /// Whether two accounts share no node.
    fn believed(&self) -> bool {
        self.accounts.iter().enumerate().any(|(i, a)| {
            self.accounts[i + 1..]
                .iter()
                .any(|b| a.iter().all(|n| !b.contains(n)))
        })
    }

    /// A witness whose own account we hold (passed on in our probes and replies).
    fn direct_witness(&self) -> Option<NodeId> {
        self.accounts.iter().find(|a| a[0] == a[1]).map(|a| a[0])
    }
}

impl Pastry {
    /// `from` gives an account that `node` failed, naming `witness` (`from` itself for a
    /// notice). A member heard from within a probe timeout is checked by our own probe (it may
    /// have answered just now); any other is believed once two accounts share no node, and
    /// probed if none came within a probe timeout. `replying`: the account came in a probe
    /// that we are about to answer (the reply tells `from` our belief). Returns whether we now
    /// believe it.
    pub(super) fn take_account(
        &mut self,
        now: Time,
        from: PeerInfo,
        node: NodeId,
        witness: NodeId,
        replying: bool,
    ) -> bool {
        if node == self.me.id || witness == self.me.id {
            return false;
        }
        let Some(peer) = self.known_peer(node) else {
            return false;
        };
        let window = self.hop_timeout(node, self.config.probe_timeout);
        let recent = self.heard_within(now, node, window);
        if !self.probes.iter().any(|p| p.peer.id == node) {
            if recent {
                self.start_probe(now, peer, ProbeKind::Verify);
            } else if self.is_neighbour(node) {
                // Its neighbour must know for itself: it tells its side of the ring.
                self.start_probe(now, peer, ProbeKind::Member);
            } else {
                self.hold_suspect(now, peer);
            }
        }
        let Some(probe) = self.probes.iter_mut().find(|p| p.peer.id == node) else {
            return false;
        };
        if matches!(probe.kind, ProbeKind::Candidate | ProbeKind::Hint) {
            probe.kind = ProbeKind::Member;
        }
        let verify = probe.kind == ProbeKind::Verify;
        let doubt = probe.doubt.get_or_insert_with(Box::default);
        doubt.add(from.id, witness);
        if from.id == witness && !doubt.told.contains(&from.id) {
            doubt.told.push(from.id);
        }
        if probe.kind == ProbeKind::Member {
            // The sender found it silent to a first try and a retry: one unanswered try of
            // our own confirms it. A node heard from lately gets its retry.
            probe.retries_left = 0;
        }
        if verify || !doubt.believed() {
            return false;
        }
        let doubt = probe.doubt.take().map(|d| *d).unwrap_or_default();
        self.stats.failures_believed += 1;
        let except = replying.then_some(from.id);
        self.conclude(now, node, doubt, except);
        true
    }

    /// Whether `id` is one of our two immediate neighbours.
    fn is_neighbour(&self, id: NodeId) -> bool {
        self.leaf_set
            .position(id)
            .is_some_and(|(_, rank)| rank == 0)
    }

    /// We believe `id` failed (our own probe, or two accounts): drop it, pass the news on, and
    /// fill its place with peers that proved alive meanwhile. Those that passed us an account
    /// naming another witness are told, except `except` (our reply to it says so).
    pub(super) fn conclude(&mut self, now: Time, id: NodeId, doubt: Doubt, except: Option<NodeId>) {
        self.forget_dead(now, id, false, &doubt.told);
        let fresh = self.config.probe_timeout * 2;
        for (peer, heard) in doubt.vouched {
            if now < heard + fresh && !self.is_dead(peer.id) {
                self.add_live(now, peer, false);
            }
        }
        for [sender, witness] in doubt.accounts {
            if sender != witness && Some(sender) != except {
                if let Some(peer) = self.known_peer(sender) {
                    self.send(
                        peer,
                        Message::NodeFailed {
                            node: id,
                            leaf_set: Vec::new(),
                        },
                    );
                }
            }
        }
    }

    /// Remembers that we hold `id` dead from our own check or two accounts (passed on as our own
    /// claim for a while).
    pub(super) fn note_failed(&mut self, now: Time, id: NodeId) {
        if self.failed_lately.len() >= MAX_FAILED_LATELY {
            self.failed_lately.pop_front();
        }
        self.failed_lately.push_back((id, now));
    }

    /// The claims our probes and replies carry: failures we hold as fact (lately), then those
    /// we were told of by their witness and wait to confirm. Never an account that we were
    /// passed (it would rest on the same nodes twice).
    pub(super) fn claims(&self, now: Time) -> Vec<FailureClaim> {
        let horizon = self.config.probe_timeout * 2;
        let own = self
            .failed_lately
            .iter()
            .rev()
            .filter(|(_, at)| now < *at + horizon)
            .map(|(node, _)| FailureClaim {
                node: *node,
                witness: self.me.id,
            });
        let told = self.probes.iter().filter_map(|p| {
            p.doubt
                .as_ref()
                .and_then(|d| d.direct_witness())
                .map(|witness| FailureClaim {
                    node: p.peer.id,
                    witness,
                })
        });
        own.chain(told).take(MAX_CLAIMS).collect()
    }

    /// The claims of a probe or reply from `from`. Returns whether any was believed.
    pub(super) fn take_claims(
        &mut self,
        now: Time,
        from: PeerInfo,
        claims: &[FailureClaim],
        replying: bool,
    ) -> bool {
        let mut believed = false;
        for claim in claims.iter().take(MAX_CLAIMS) {
            // Passed on only between leaf-set members: about a node outside our leaf set it is
            // not worth a probe.
            if self.leaf_set.contains(claim.node) {
                believed |= self.take_account(now, from, claim.node, claim.witness, replying);
            }
        }
        believed
    }

    /// Our leaf set as it would be without the members we were told failed and wait to
    /// confirm, if there are any.
    pub(super) fn leaf_set_without_doubted(&self) -> Option<LeafSet> {
        let doubted: Vec<NodeId> = self
            .probes
            .iter()
            .filter(|p| p.kind == ProbeKind::Member && p.doubt.is_some())
            .map(|p| p.peer.id)
            .collect();
        if doubted.is_empty() {
            return None;
        }
        let mut without = self.leaf_set.clone();
        for id in doubted {
            without.remove(id);
        }
        Some(without)
    }

    /// `peer` proved alive and active but did not enter our leaf set: if it would once a
    /// doubted member is gone, keep it for then.
    pub(super) fn vouch(&mut self, now: Time, peer: PeerInfo) {
        if self.leaf_set.contains(peer.id) || self.leaf_set.would_accept(peer.id) {
            return;
        }
        let Some(without) = self.leaf_set_without_doubted() else {
            return;
        };
        if !without.would_accept(peer.id) {
            return;
        }
        for probe in &mut self.probes {
            if probe.kind != ProbeKind::Member {
                continue;
            }
            if let Some(doubt) = probe.doubt.as_mut() {
                doubt.vouched.retain(|(p, _)| p.id != peer.id);
                if doubt.vouched.len() < MAX_VOUCHED {
                    doubt.vouched.push((peer, now));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(x: u128) -> NodeId {
        NodeId::from_u128(x)
    }

    #[test]
    fn two_accounts_are_believed_only_when_they_share_no_node() {
        let mut doubt = Doubt::default();
        doubt.add(n(1), n(1));
        assert!(!doubt.believed());
        // The same sender again, or another sender naming the first: one node behind both.
        doubt.add(n(1), n(2));
        doubt.add(n(3), n(1));
        assert!(!doubt.believed());
        doubt.add(n(4), n(5));
        assert!(doubt.believed());
    }

    #[test]
    fn a_liar_passing_on_an_honest_witness_and_telling_one_itself_is_not_believed() {
        let liar = n(9);
        let mut doubt = Doubt::default();
        // The liar says "5 told me", and an honest node passes on the liar's own notice.
        doubt.add(liar, n(5));
        doubt.add(n(6), liar);
        doubt.add(liar, liar);
        assert!(!doubt.believed());
    }

    #[test]
    fn a_senders_own_account_replaces_the_one_it_passed_on() {
        let mut doubt = Doubt::default();
        doubt.add(n(1), n(2));
        doubt.add(n(2), n(2));
        assert!(!doubt.believed());
        doubt.add(n(1), n(1));
        assert!(doubt.believed());
    }
}
