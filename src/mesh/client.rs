//! The registry client's side: publishing this node's records and looking providers up, both
//! as requests routed to the name's key and answered directly.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, warn, Instrument};

use super::message::MeshMessage;
use super::{millis, service_key, unix_ms_now, Inner, MeshError, ServiceRecord, SignedRecord};
use crate::id::NodeId;
use crate::wire::PayloadKind;

impl Inner {
    /// Routes a registry request for `name` and waits for its answer, retrying on timeouts.
    async fn request(
        &self,
        name: &str,
        attempts: u32,
        build: impl Fn(u64, SocketAddr) -> MeshMessage,
    ) -> Result<MeshMessage, MeshError> {
        let attempts = attempts.max(1);
        for attempt in 1..=attempts {
            // Random ids, so no other node can guess one and answer in the registry's place.
            let request: u64 = rand::random();
            let (waiter, answer) = oneshot::channel();
            self.lock().pending.insert(request, waiter);
            let payload = build(request, self.node.addr()).encode();
            let routed = self
                .node
                .route_kind(service_key(name), PayloadKind::Mesh, &payload)
                .await;
            if let Err(error) = routed {
                self.lock().pending.remove(&request);
                return Err(error.into());
            }
            match tokio::time::timeout(self.config.request_timeout, answer).await {
                Ok(Ok(answer)) => return Ok(answer),
                _ => {
                    self.lock().pending.remove(&request);
                    debug!(name, attempt, "registry request unanswered");
                }
            }
        }
        Err(MeshError::RegistryTimeout {
            name: name.to_owned(),
            attempts,
        })
    }

    /// Signs and publishes a record for `name` expiring at `expires_unix_ms` (a withdrawal if
    /// that is now), sending it up to `attempts` times while unanswered.
    pub(super) async fn publish(
        &self,
        name: &str,
        expires_unix_ms: u64,
        attempts: u32,
    ) -> Result<(), MeshError> {
        let record = self.sign(name, expires_unix_ms)?;
        let answer = self
            .request(name, attempts, |request, reply_addr| MeshMessage::Publish {
                request,
                reply_addr,
                record: record.clone(),
            })
            .await?;
        match answer {
            MeshMessage::Stored { .. } => Ok(()),
            MeshMessage::Refused { reason, .. } => Err(MeshError::Refused {
                name: name.to_owned(),
                reason,
            }),
            other => Err(MeshError::Refused {
                name: name.to_owned(),
                reason: format!("unexpected answer {other:?}"),
            }),
        }
    }

    pub(super) fn sign(&self, name: &str, expires_unix_ms: u64) -> Result<SignedRecord, MeshError> {
        let sequence = {
            let mut state = self.lock();
            // Unix milliseconds, so a restarted provider's records supersede its old ones.
            state.last_sequence = state.last_sequence.saturating_add(1).max(unix_ms_now());
            state.last_sequence
        };
        let record = ServiceRecord::new(
            &self.identity,
            name,
            self.node.addr(),
            expires_unix_ms,
            sequence,
        )?;
        Ok(record.sign(&self.identity)?)
    }

    /// Asks the registry for `name`'s providers; keeps the verified, unexpired ones. An empty
    /// answer is asked again twice (a node that just became root may be receiving the records).
    pub(super) async fn lookup(&self, name: &str) -> Result<Vec<ServiceRecord>, MeshError> {
        const EMPTY_RETRIES: u32 = 2;
        let mut round = 0;
        let records = loop {
            let records = self.lookup_once(name).await?;
            if !records.is_empty() || round == EMPTY_RETRIES {
                break records;
            }
            round += 1;
            tokio::time::sleep(Duration::from_millis(250) * round).await;
        };
        self.lock()
            .cache
            .insert(name.to_owned(), (Instant::now(), records.clone()));
        self.probe(&records);
        Ok(records)
    }

    async fn lookup_once(&self, name: &str) -> Result<Vec<ServiceRecord>, MeshError> {
        let answer = self
            .request(name, self.config.request_attempts, |request, reply_addr| {
                MeshMessage::Lookup {
                    request,
                    reply_addr,
                    name: name.to_owned(),
                }
            })
            .await?;
        let MeshMessage::Found { records, .. } = answer else {
            return Ok(Vec::new());
        };
        let now = unix_ms_now();
        let mut best: HashMap<NodeId, ServiceRecord> = HashMap::new();
        let max_ttl = millis(self.config.max_record_ttl);
        for signed in &records {
            let checked = signed
                .verify(now)
                .and_then(|record| signed.check_lifetime(now, max_ttl).map(|()| record));
            match checked {
                Ok(record) if record.name == name => {
                    let newer = !matches!(
                        best.get(&record.provider),
                        Some(held) if held.sequence >= record.sequence
                    );
                    if newer {
                        best.insert(record.provider, record.clone());
                    }
                }
                Ok(record) => warn!(name, other = record.name, "lookup answered another name"),
                Err(error) => warn!(name, %error, "refused a service record"),
            }
        }
        Ok(best.into_values().collect())
    }

    /// Opens links to providers whose RTT is unknown, so the next ranking can use it.
    fn probe(&self, records: &[ServiceRecord]) {
        let me = self.node.id();
        let now = Instant::now();
        for record in records {
            if record.provider == me || self.node.rtt(record.provider).is_some() {
                continue;
            }
            let fresh = self.lock().probed.insert(record.provider, now).is_none();
            if !fresh {
                continue;
            }
            let node = self.node.clone();
            let (to, addr) = (record.provider, record.addr);
            tokio::spawn(
                async move {
                    let probe = MeshMessage::Probe.encode();
                    let sent = node.send_to_kind(to, addr, PayloadKind::Mesh, &probe).await;
                    if let Err(error) = sent {
                        debug!(%to, %error, "provider probe failed");
                    }
                }
                .in_current_span(),
            );
        }
    }

    pub(super) fn cached(&self, name: &str) -> Option<Vec<ServiceRecord>> {
        let state = self.lock();
        let (at, records) = state.cache.get(name)?;
        (at.elapsed() < self.config.lookup_cache && !records.is_empty()).then(|| records.clone())
    }

    pub(super) fn failed_recently(&self, id: NodeId) -> bool {
        self.lock()
            .failed
            .get(&id)
            .is_some_and(|at| at.elapsed() < self.config.failure_memory)
    }
}
