//! Structural checks of the peer lists a message carries, before any of it is used.
//!
//! Every list a peer sends describes one of its structures (its leaf set, a routing-table row,
//! its neighbourhood set), so its shape is known: how long it can be, which ids cannot be in
//! it, and for a row which prefix every entry shares. A list that breaks its shape comes from
//! a broken or hostile peer: it is not used at all, and the core reports
//! [`Event::Misbehaved`](super::Event::Misbehaved). What else the message says is still
//! handled where it proves something on its own (a heartbeat still shows its sender alive, a
//! probe is still answered); a `JoinState` is dropped whole (the join restarts if it stalls).
//!
//! This module owns only the checks; the handlers never see a list that failed one.

use crate::id::{NodeId, DIGITS, DIGIT_VALUES};

use super::state::Pastry;
use super::{Event, Message, MessageKind, PeerInfo, MAX_CLAIMS};

/// What was wrong with a message a peer sent ([`Event::Misbehaved`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Misbehaviour {
    /// A list holds more peers than the structure it describes can hold.
    #[error("{} lists {len} peers, more than the {max} its structure holds", .kind.name())]
    TooManyPeers {
        /// The message's kind.
        kind: MessageKind,
        /// Peers listed.
        len: usize,
        /// The most the structure holds.
        max: usize,
    },
    /// A list names the same node twice.
    #[error("{} names {id} twice", .kind.name())]
    DuplicatePeer {
        /// The message's kind.
        kind: MessageKind,
        /// The repeated id.
        id: NodeId,
    },
    /// A list names a node that cannot be in it: the sender itself, this node where the sender
    /// leaves it out, or the node a failure notice is about.
    #[error("{} names {id}, which cannot be in that list", .kind.name())]
    MisplacedPeer {
        /// The message's kind.
        kind: MessageKind,
        /// The misplaced id.
        id: NodeId,
    },
    /// A routing-table row index past the table, given twice, or past the prefix the sender
    /// shares with this node (a join hop sends only rows up to that prefix).
    #[error("{} carries row {row}, which it cannot send", .kind.name())]
    BadRow {
        /// The message's kind.
        kind: MessageKind,
        /// The row index.
        row: u8,
    },
    /// A row entry that does not share exactly `row` digits with the sender, shares fewer than
    /// `row` digits with this node, or takes a column another entry took: it belongs to no row
    /// the sender could send us.
    #[error("{} puts {id} in row {row}, where it does not belong", .kind.name())]
    WrongRow {
        /// The message's kind.
        kind: MessageKind,
        /// The row index.
        row: u8,
        /// The entry.
        id: NodeId,
    },
}

/// The ids of `list` must be distinct and none may be in `forbidden`.
fn distinct_and_allowed(
    kind: MessageKind,
    list: &[PeerInfo],
    forbidden: &[NodeId],
) -> Result<(), Misbehaviour> {
    if let Some(p) = list.iter().find(|p| forbidden.contains(&p.id)) {
        return Err(Misbehaviour::MisplacedPeer { kind, id: p.id });
    }
    let mut ids: Vec<NodeId> = list.iter().map(|p| p.id).collect();
    ids.sort_unstable();
    match ids.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(Misbehaviour::DuplicatePeer { kind, id: w[0] }),
        None => Ok(()),
    }
}

fn at_most<T>(kind: MessageKind, list: &[T], max: usize) -> Result<(), Misbehaviour> {
    if list.len() > max {
        return Err(Misbehaviour::TooManyPeers {
            kind,
            len: list.len(),
            max,
        });
    }
    Ok(())
}

impl Pastry {
    /// Checks the peer lists of `msg` from `from`. On a misshapen list the core reports
    /// [`Event::Misbehaved`] and returns what is still worth handling: the message with the
    /// list emptied, or `None` for a `JoinState` (dropped whole) and a `RowReply` (nothing but
    /// its list).
    pub(super) fn screen(&mut self, from: PeerInfo, msg: Message) -> Option<Message> {
        let Err(reason) = self.check(from.id, &msg) else {
            return Some(msg);
        };
        self.misbehaved(from.id, reason);
        match msg {
            Message::Announce { .. } => Some(Message::Announce { leaf_set: vec![] }),
            Message::Probe { nonce, active, .. } => Some(Message::Probe {
                nonce,
                active,
                leaf_set: vec![],
                failed: vec![],
            }),
            Message::ProbeReply { nonce, active, .. } => Some(Message::ProbeReply {
                nonce,
                active,
                leaf_set: vec![],
                failed: vec![],
            }),
            Message::Heartbeat { .. } => Some(Message::Heartbeat { leaf_set: vec![] }),
            Message::NodeFailed { node, .. } => Some(Message::NodeFailed {
                node,
                leaf_set: vec![],
            }),
            Message::Leave { .. } => Some(Message::Leave { leaf_set: vec![] }),
            _ => None,
        }
    }

    /// Reports `peer`'s misbehaviour.
    pub(super) fn misbehaved(&mut self, peer: NodeId, reason: Misbehaviour) {
        tracing::debug!(me = ?self.me.id, ?peer, %reason, "peer misbehaved");
        self.stats.misbehaviours += 1;
        self.emit(Event::Misbehaved { peer, reason });
    }

    fn check(&self, from: NodeId, msg: &Message) -> Result<(), Misbehaviour> {
        let kind = msg.kind();
        let leaf_max = self.config.leaf_set_size;
        match msg {
            // A leaf set never holds its owner; ours may hold us.
            Message::Probe {
                leaf_set, failed, ..
            }
            | Message::ProbeReply {
                leaf_set, failed, ..
            } => {
                at_most(kind, failed, MAX_CLAIMS)?;
                at_most(kind, leaf_set, leaf_max)?;
                distinct_and_allowed(kind, leaf_set, &[from])
            }
            Message::Announce { leaf_set }
            | Message::Heartbeat { leaf_set }
            | Message::Leave { leaf_set }
            | Message::RootAnswer { leaf_set, .. } => {
                at_most(kind, leaf_set, leaf_max)?;
                distinct_and_allowed(kind, leaf_set, &[from])
            }
            // The root's leaf set, relayed: the relaying hop may be in it, the root may not.
            Message::RootAnswerRelay { root, leaf_set, .. } => {
                at_most(kind, leaf_set, leaf_max)?;
                distinct_and_allowed(kind, leaf_set, &[root.id])
            }
            // The sender's leaf set after it dropped `node`.
            Message::NodeFailed { node, leaf_set } => {
                at_most(kind, leaf_set, leaf_max)?;
                distinct_and_allowed(kind, leaf_set, &[from, *node])
            }
            Message::RowReply { row, entries } => self.check_row(kind, from, *row, entries),
            Message::JoinState {
                rows,
                neighbourhood,
                leaf_set,
            } => {
                if rows.len() > DIGITS {
                    return Err(Misbehaviour::TooManyPeers {
                        kind,
                        len: rows.len(),
                        max: DIGITS,
                    });
                }
                // A hop sends rows up to the prefix it shares with the joiner (us), each once.
                let shared = from.shared_prefix_len(self.me.id);
                let mut seen = 0u64;
                for (row, entries) in rows {
                    let index = usize::from(*row);
                    if index > shared || seen & (1 << index) != 0 {
                        return Err(Misbehaviour::BadRow { kind, row: *row });
                    }
                    seen |= 1 << index;
                    self.check_row(kind, from, *row, entries)?;
                }
                at_most(kind, neighbourhood, self.config.neighbourhood_size)?;
                // The hop leaves the joiner out of every list it sends it.
                distinct_and_allowed(kind, neighbourhood, &[from, self.me.id])?;
                if let Some(leaf_set) = leaf_set {
                    at_most(kind, leaf_set, leaf_max)?;
                    distinct_and_allowed(kind, leaf_set, &[from, self.me.id])?;
                }
                Ok(())
            }
            Message::Join { .. }
            | Message::RowRequest { .. }
            | Message::Route { .. }
            | Message::RouteAck { .. }
            | Message::ProofWanted { .. } => Ok(()),
        }
    }

    /// Row `row` of `from`'s routing table: every entry shares exactly `row` digits with
    /// `from`, one per column (so at most 16), and at least `row` with us (we asked a node
    /// sharing that much, or it passes on a newcomer of a row we share); the sender leaves us
    /// and itself out.
    fn check_row(
        &self,
        kind: MessageKind,
        from: NodeId,
        row: u8,
        entries: &[PeerInfo],
    ) -> Result<(), Misbehaviour> {
        let index = usize::from(row);
        if index >= DIGITS {
            return Err(Misbehaviour::BadRow { kind, row });
        }
        at_most(kind, entries, DIGIT_VALUES)?;
        distinct_and_allowed(kind, entries, &[from, self.me.id])?;
        let mut columns = 0u32;
        for p in entries {
            let ours = self.table.position(p.id).map(|(r, _)| r);
            let column = 1u32 << p.id.digit(index);
            if from.shared_prefix_len(p.id) != index
                || ours.map_or(true, |r| r < index)
                || columns & column != 0
            {
                return Err(Misbehaviour::WrongRow {
                    kind,
                    row,
                    id: p.id,
                });
            }
            columns |= column;
        }
        Ok(())
    }
}
