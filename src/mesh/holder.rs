//! The registry holder's side: storing published records as the root of their name, copying
//! them to the replicas, handing them over when the leaf set changes, and answering requests.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::{debug, warn, Instrument};

use super::message::MeshMessage;
use super::registry::{replica_set, Offer, StoreLimits};
use super::{millis, service_key, unix_ms_now, Inner, SignedRecord};
use crate::id::{Key, NodeId};
use crate::node::NodeError;
use crate::wire::PayloadKind;

/// Most hand-overs a node keeps while it is not (yet) among the closest to their name, and how
/// long it keeps each: a failure's news reaches the holders and the new replica at slightly
/// different times (each checks the dead node with its own probe), so a hand-over can arrive
/// a probe timeout early. Bounded, so a peer cannot make a node store names it does not hold.
pub(super) const DEFERRED_HANDOVERS: usize = 16;
const DEFERRED_FOR: Duration = Duration::from_secs(30);

impl Inner {
    fn limits(&self) -> StoreLimits {
        StoreLimits {
            max_ttl_ms: millis(self.config.max_record_ttl),
            max_providers_per_name: self.config.max_providers_per_name,
            max_names: self.config.max_names_held,
        }
    }

    fn refused(&self) {
        self.records_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// A mesh message routed to `key`, of which this node is root.
    pub(super) fn on_routed(self: &Arc<Self>, origin: NodeId, key: Key, message: MeshMessage) {
        match message {
            MeshMessage::Publish {
                request,
                reply_addr,
                record,
            } => {
                if key != service_key(&record.record.name) {
                    warn!(%origin, name = record.record.name, %key, "refused a record routed to the wrong key");
                    self.refused();
                    return;
                }
                // A live record is stored only once its provider answered at its address: the
                // handshake proves an admitted node with that key is there (so records signed
                // by throw-away keys cannot fill the registry). Withdrawals need no proof.
                let withdrawal = record.record.is_expired(unix_ms_now());
                let provider = record.record.provider;
                if withdrawal || provider == self.node.id() {
                    let answer = self.store_as_root(origin, request, record);
                    self.answer(origin, reply_addr, request, answer);
                    return;
                }
                let Some(permit) = self.send_permit() else {
                    return;
                };
                let inner = self.clone();
                tokio::spawn(
                    async move {
                        let payload = MeshMessage::Probe.encode();
                        let probe = inner.node.send_to_kind(
                            provider,
                            record.record.addr,
                            PayloadKind::Mesh,
                            &payload,
                        );
                        let reached =
                            tokio::time::timeout(inner.config.connect_timeout, probe).await;
                        drop(permit);
                        let answer = match reached {
                            Ok(Ok(())) => inner.store_as_root(origin, request, record),
                            Ok(Err(error)) => {
                                inner.refused();
                                MeshMessage::Refused {
                                    request,
                                    reason: format!(
                                        "the provider is not reachable at {}: {error}",
                                        record.record.addr
                                    ),
                                }
                            }
                            Err(_) => {
                                inner.refused();
                                MeshMessage::Refused {
                                    request,
                                    reason: format!(
                                        "the provider did not answer at {}",
                                        record.record.addr
                                    ),
                                }
                            }
                        };
                        inner.answer(origin, reply_addr, request, answer);
                    }
                    .in_current_span(),
                );
            }
            MeshMessage::Lookup {
                request,
                reply_addr,
                name,
            } => {
                if key != service_key(&name) {
                    warn!(%origin, name, %key, "ignored a lookup routed to the wrong key");
                    return;
                }
                let records = self.lock().registry.live(&name, unix_ms_now());
                debug!(name, %origin, found = records.len(), "answering a lookup");
                self.answer(
                    origin,
                    reply_addr,
                    request,
                    MeshMessage::Found { request, records },
                );
            }
            other => debug!(%origin, ?other, "ignored a routed mesh message of a direct kind"),
        }
    }

    /// Stores a published record as the root of its name, hands it to the replicas, and says
    /// what to answer.
    fn store_as_root(&self, origin: NodeId, request: u64, record: SignedRecord) -> MeshMessage {
        let name = record.record.name.clone();
        let offered = self
            .lock()
            .registry
            .offer(record, unix_ms_now(), &self.limits());
        match offered {
            Ok(Offer::Stored | Offer::Stale) => {
                debug!(name, %origin, "stored a service record as root");
                self.replicate_as_root(&name);
                MeshMessage::Stored { request }
            }
            Ok(Offer::Full) => {
                warn!(name, %origin, "registry full: refused a service record");
                self.refused();
                MeshMessage::Refused {
                    request,
                    reason: "the registry holds as many providers or names as it may".to_owned(),
                }
            }
            Err(error) => {
                warn!(name, %origin, %error, "refused a published service record");
                self.refused();
                MeshMessage::Refused {
                    request,
                    reason: error.to_string(),
                }
            }
        }
    }

    /// A mesh message sent directly to this node.
    pub(super) fn on_direct(&self, from: NodeId, message: MeshMessage) {
        match message {
            MeshMessage::Replicate { records } => self.on_replicate(from, records),
            MeshMessage::Stored { request }
            | MeshMessage::Refused { request, .. }
            | MeshMessage::Found { request, .. } => self.complete(request, message),
            MeshMessage::Probe => {}
            other => debug!(%from, ?other, "ignored a direct mesh message of a routed kind"),
        }
    }

    /// Records handed over by a holder: kept only if they are for one name, no more than a
    /// holder may keep, and this node is among the closest to that name's key (so a peer cannot
    /// fill any node's store with names it is not responsible for).
    fn on_replicate(&self, from: NodeId, records: Vec<SignedRecord>) {
        let Some(name) = records.first().map(|r| r.record.name.clone()) else {
            return;
        };
        let one_name = records.iter().all(|r| r.record.name == name);
        if !one_name || records.len() > self.config.max_providers_per_name {
            warn!(%from, count = records.len(), "refused a malformed replication");
            self.records_refused
                .fetch_add(records.len() as u64, Ordering::Relaxed);
            return;
        }
        let me = self.node.id();
        let limits = self.limits();
        let now = unix_ms_now();
        let mut state = self.lock();
        let set = replica_set(
            service_key(&name),
            me,
            &state.leaf_set,
            self.config.replicas,
        );
        if !set.contains(&me) {
            debug!(%from, name, "deferred records for a name this node does not hold (yet)");
            if state.deferred.len() >= DEFERRED_HANDOVERS {
                if let Some((_, _, dropped)) = state.deferred.pop_front() {
                    self.records_refused
                        .fetch_add(dropped.len() as u64, Ordering::Relaxed);
                }
            }
            state.deferred.push_back((Instant::now(), from, records));
            return;
        }
        self.store_handed_over(&mut state, from, records, now, &limits);
    }

    fn store_handed_over(
        &self,
        state: &mut super::State,
        from: NodeId,
        records: Vec<SignedRecord>,
        now: u64,
        limits: &StoreLimits,
    ) {
        for record in records {
            match state.registry.offer(record, now, limits) {
                Ok(Offer::Stored | Offer::Stale) => {}
                Ok(Offer::Full) => self.refused(),
                Err(error) => {
                    warn!(%from, %error, "refused a replicated service record");
                    self.refused();
                }
            }
        }
    }

    /// Takes the deferred hand-overs this node is now among the closest for; forgets the old.
    fn take_deferred(&self, state: &mut super::State) {
        let me = self.node.id();
        let limits = self.limits();
        let now = unix_ms_now();
        let deferred = std::mem::take(&mut state.deferred);
        for (at, from, records) in deferred {
            if at.elapsed() > DEFERRED_FOR {
                self.records_refused
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
                continue;
            }
            let Some(name) = records.first().map(|r| r.record.name.clone()) else {
                continue;
            };
            let set = replica_set(
                service_key(&name),
                me,
                &state.leaf_set,
                self.config.replicas,
            );
            if set.contains(&me) {
                debug!(%from, name, "took records handed over before this node held the name");
                self.store_handed_over(state, from, records, now, &limits);
            } else {
                state.deferred.push_back((at, from, records));
            }
        }
    }

    /// A slot for one more answer or replication in flight, if any is free.
    fn send_permit(&self) -> Option<OwnedSemaphorePermit> {
        let permit = self.sends.clone().try_acquire_owned().ok();
        if permit.is_none() {
            self.sends_dropped.fetch_add(1, Ordering::Relaxed);
            debug!("too many registry sends in flight; dropped one");
        }
        permit
    }

    fn complete(&self, request: u64, answer: MeshMessage) {
        if let Some(waiter) = self.lock().pending.remove(&request) {
            let _ = waiter.send(answer);
        }
    }

    /// Sends `answer` to the node that asked (locally if this node asked itself).
    fn answer(&self, origin: NodeId, reply_addr: SocketAddr, request: u64, answer: MeshMessage) {
        if origin == self.node.id() {
            self.complete(request, answer);
            return;
        }
        let Some(permit) = self.send_permit() else {
            return;
        };
        let node = self.node.clone();
        tokio::spawn(
            async move {
                let payload = answer.encode();
                // A node in this one's tables is reached on its known link; the requester's
                // own address is used only otherwise.
                let sent = match node.send_kind(origin, PayloadKind::Mesh, &payload).await {
                    Err(NodeError::UnknownPeer(_)) => {
                        node.send_to_kind(origin, reply_addr, PayloadKind::Mesh, &payload)
                            .await
                    }
                    other => other,
                };
                if let Err(error) = sent {
                    debug!(%origin, %error, "could not answer a registry request");
                }
                drop(permit);
            }
            .in_current_span(),
        );
    }

    fn send_direct(&self, to: NodeId, message: &MeshMessage) {
        let Some(permit) = self.send_permit() else {
            return;
        };
        let node = self.node.clone();
        let payload = message.encode();
        tokio::spawn(
            async move {
                if let Err(error) = node.send_kind(to, PayloadKind::Mesh, &payload).await {
                    debug!(%to, %error, "could not replicate service records");
                }
                drop(permit);
            }
            .in_current_span(),
        );
    }

    /// As root of `name`: copies its records to the other replica holders.
    fn replicate_as_root(&self, name: &str) {
        let me = self.node.id();
        let (targets, records) = {
            let mut state = self.lock();
            let set = replica_set(service_key(name), me, &state.leaf_set, self.config.replicas);
            state.registry.newly_pushed(name, &set);
            (set, state.registry.all(name))
        };
        let message = MeshMessage::Replicate { records };
        for to in targets.into_iter().filter(|&id| id != me) {
            self.send_direct(to, &message);
        }
    }

    /// The leaf set changed: nodes newly among the closest to a key this node holds records
    /// for get them (so a node that becomes root, or a replica, has them at once).
    pub(super) fn on_leaf_set(&self, leaf_set: Vec<NodeId>) {
        let me = self.node.id();
        let mut pushes = Vec::new();
        {
            let mut state = self.lock();
            state.leaf_set = leaf_set;
            self.take_deferred(&mut state);
            for name in state.registry.names() {
                let set = replica_set(
                    service_key(&name),
                    me,
                    &state.leaf_set,
                    self.config.replicas,
                );
                if !set.contains(&me) {
                    continue;
                }
                let new: Vec<NodeId> = state
                    .registry
                    .newly_pushed(&name, &set)
                    .into_iter()
                    .filter(|&id| id != me)
                    .collect();
                if !new.is_empty() {
                    pushes.push((new, state.registry.all(&name)));
                }
            }
        }
        for (targets, records) in pushes {
            let message = MeshMessage::Replicate { records };
            for to in targets {
                debug!(%to, "handing service records to a node newly among the closest");
                self.send_direct(to, &message);
            }
        }
    }
}
