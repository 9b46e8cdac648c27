//! The records a node holds for the names whose root (or replica) it is, and the pure choices
//! around them: which nodes replicate a name, which provider a consumer tries first.
//!
//! No IO and no clock here: the time comes in as an argument.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use super::record::{RecordError, ServiceRecord, SignedRecord};
use crate::id::{Key, NodeId};

/// The registry key of a service name: `Key::from_name("svc:" + name)`.
pub fn service_key(name: &str) -> Key {
    Key::from_name(&format!("svc:{name}"))
}

/// What [`Registry::offer`] did with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    /// It is new or newer than the one held: stored.
    Stored,
    /// The store already holds this or a newer sequence from that provider.
    Stale,
    /// Not stored: the store holds as many providers for the name, or as many names, as its
    /// [`StoreLimits`] allow.
    Full,
}

/// Bounds on what one node stores for others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StoreLimits {
    /// The longest record lifetime accepted (ms from now).
    pub(crate) max_ttl_ms: u64,
    /// The most providers held per name.
    pub(crate) max_providers_per_name: usize,
    /// The most names held.
    pub(crate) max_names: usize,
}

/// The records held by one node, per name and provider.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    records: HashMap<String, HashMap<NodeId, SignedRecord>>,
    /// Per name, the replica set this node last pushed the name's records to.
    pushed: HashMap<String, BTreeSet<NodeId>>,
}

impl Registry {
    /// Stores `record` if its signature checks, its lifetime is within `limits`, and it is newer
    /// than the held one from the same provider. Expired records (withdrawals) are stored too,
    /// so they replace what they withdraw; [`Self::live`] never returns them. A new provider or
    /// name beyond `limits` is not stored ([`Offer::Full`]).
    pub(crate) fn offer(
        &mut self,
        record: SignedRecord,
        now_unix_ms: u64,
        limits: &StoreLimits,
    ) -> Result<Offer, RecordError> {
        record.verify_signature()?;
        record.check_lifetime(now_unix_ms, limits.max_ttl_ms)?;
        let name = &record.record.name;
        if !self.records.contains_key(name) && self.records.len() >= limits.max_names {
            return Ok(Offer::Full);
        }
        let by_provider = self.records.entry(name.clone()).or_default();
        match by_provider.get(&record.record.provider) {
            Some(held) if held.record.sequence >= record.record.sequence => Ok(Offer::Stale),
            Some(_) => {
                by_provider.insert(record.record.provider, record);
                Ok(Offer::Stored)
            }
            None if by_provider.len() >= limits.max_providers_per_name => Ok(Offer::Full),
            None => {
                by_provider.insert(record.record.provider, record);
                Ok(Offer::Stored)
            }
        }
    }

    /// The unexpired records for `name`.
    pub(crate) fn live(&self, name: &str, now_unix_ms: u64) -> Vec<SignedRecord> {
        self.records
            .get(name)
            .map(|by_provider| {
                by_provider
                    .values()
                    .filter(|r| !r.record.is_expired(now_unix_ms))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every record for `name`, withdrawals included (what replicas are given).
    pub(crate) fn all(&self, name: &str) -> Vec<SignedRecord> {
        self.records
            .get(name)
            .map(|by_provider| by_provider.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The names with records.
    pub(crate) fn names(&self) -> Vec<String> {
        self.records.keys().cloned().collect()
    }

    /// Unexpired records held, all names together.
    pub(crate) fn live_count(&self, now_unix_ms: u64) -> usize {
        self.records
            .values()
            .flat_map(|by_provider| by_provider.values())
            .filter(|r| !r.record.is_expired(now_unix_ms))
            .count()
    }

    /// Drops records that expired more than `grace_ms` ago (withdrawals are kept that long so
    /// a late copy of what they withdrew cannot come back).
    pub(crate) fn sweep(&mut self, now_unix_ms: u64, grace_ms: u64) {
        for by_provider in self.records.values_mut() {
            by_provider
                .retain(|_, r| r.record.expires_unix_ms.saturating_add(grace_ms) > now_unix_ms);
        }
        self.records
            .retain(|_, by_provider| !by_provider.is_empty());
        let records = &self.records;
        self.pushed.retain(|name, _| records.contains_key(name));
    }

    /// Records that `name`'s replica set is now `set`; returns the members that were not in it
    /// at the last call (those need the records).
    pub(crate) fn newly_pushed(&mut self, name: &str, set: &[NodeId]) -> Vec<NodeId> {
        let set: BTreeSet<NodeId> = set.iter().copied().collect();
        let previous = self.pushed.insert(name.to_owned(), set.clone());
        let previous = previous.unwrap_or_default();
        set.difference(&previous).copied().collect()
    }
}

/// The `replicas` nodes closest to `key` among `me` and `leaf_set`, closest first (the root,
/// then the nodes that take over when it fails), by the ring's tie rule.
pub(crate) fn replica_set(
    key: Key,
    me: NodeId,
    leaf_set: &[NodeId],
    replicas: usize,
) -> Vec<NodeId> {
    let mut candidates: Vec<NodeId> = leaf_set.to_vec();
    candidates.push(me);
    candidates.sort_by(|a, b| key.cmp_closeness(*a, *b));
    candidates.dedup();
    candidates.truncate(replicas.max(1));
    candidates
}

/// The order in which a consumer tries providers: providers that did not fail recently first;
/// among them, those with a measured RTT, lowest first; then the newest records first.
pub(crate) fn rank_providers(
    mut records: Vec<ServiceRecord>,
    rtt: impl Fn(NodeId) -> Option<Duration>,
    failed_recently: impl Fn(NodeId) -> bool,
) -> Vec<ServiceRecord> {
    records.sort_by_cached_key(|r| {
        let rtt = rtt(r.provider);
        (
            failed_recently(r.provider),
            rtt.is_none(),
            rtt.unwrap_or_default(),
            Reverse(r.sequence),
        )
    });
    records
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    const LIMITS: StoreLimits = StoreLimits {
        max_ttl_ms: 10_000,
        max_providers_per_name: 3,
        max_names: 2,
    };

    fn record(seed: u8, name: &str, expires: u64, sequence: u64) -> SignedRecord {
        let id = Identity::from_seed([seed; 32]);
        ServiceRecord::new(&id, name, "127.0.0.1:1".parse().unwrap(), expires, sequence)
            .unwrap()
            .sign(&id)
            .unwrap()
    }

    #[test]
    fn the_newest_record_per_provider_wins() {
        let mut registry = Registry::default();
        assert_eq!(
            registry.offer(record(1, "web", 100, 2), 0, &LIMITS),
            Ok(Offer::Stored)
        );
        assert_eq!(
            registry.offer(record(1, "web", 200, 1), 0, &LIMITS),
            Ok(Offer::Stale)
        );
        assert_eq!(
            registry.offer(record(1, "web", 200, 2), 0, &LIMITS),
            Ok(Offer::Stale)
        );
        assert_eq!(
            registry.offer(record(2, "web", 100, 1), 0, &LIMITS),
            Ok(Offer::Stored)
        );
        assert_eq!(registry.live("web", 50).len(), 2);
        assert_eq!(
            registry.offer(record(1, "web", 300, 3), 0, &LIMITS),
            Ok(Offer::Stored)
        );
        let live = registry.live("web", 150);
        assert_eq!(live.len(), 1, "provider 2's record expired at 100");
        assert_eq!(live[0].record.sequence, 3);
        assert!(registry.live("other", 0).is_empty());
    }

    #[test]
    fn a_withdrawal_hides_the_record_and_is_swept_later() {
        let mut registry = Registry::default();
        registry
            .offer(record(1, "web", 1_000, 1), 0, &LIMITS)
            .unwrap();
        // Withdrawn at t=10: expiry 10, newer sequence.
        registry.offer(record(1, "web", 10, 2), 0, &LIMITS).unwrap();
        assert!(registry.live("web", 20).is_empty());
        // A late copy of the withdrawn record does not come back.
        assert_eq!(
            registry.offer(record(1, "web", 1_000, 1), 0, &LIMITS),
            Ok(Offer::Stale)
        );
        registry.sweep(20, 100);
        assert_eq!(registry.all("web").len(), 1, "kept within the grace period");
        registry.sweep(200, 100);
        assert!(registry.all("web").is_empty());
        assert!(registry.names().is_empty());
    }

    #[test]
    fn forged_records_are_not_stored() {
        let mut registry = Registry::default();
        let mut forged = record(1, "web", 1_000, 1);
        forged.record.addr = "10.0.0.1:22".parse().unwrap();
        assert!(registry.offer(forged, 0, &LIMITS).is_err());
        assert!(registry.all("web").is_empty());
    }

    #[test]
    fn the_store_is_bounded() {
        let mut registry = Registry::default();
        for seed in 1..=3 {
            assert_eq!(
                registry.offer(record(seed, "web", 1_000, 1), 0, &LIMITS),
                Ok(Offer::Stored)
            );
        }
        // A fourth provider of the name is not stored; a known one still refreshes.
        assert_eq!(
            registry.offer(record(4, "web", 1_000, 1), 0, &LIMITS),
            Ok(Offer::Full)
        );
        assert_eq!(
            registry.offer(record(1, "web", 2_000, 2), 0, &LIMITS),
            Ok(Offer::Stored)
        );
        assert_eq!(registry.live("web", 0).len(), 3);
        // A third name is not stored.
        assert_eq!(
            registry.offer(record(1, "db", 1_000, 1), 0, &LIMITS),
            Ok(Offer::Stored)
        );
        assert_eq!(
            registry.offer(record(1, "mq", 1_000, 1), 0, &LIMITS),
            Ok(Offer::Full)
        );
        assert!(registry.all("mq").is_empty());
        assert_eq!(registry.names().len(), 2);
        // A record that outlives the longest lifetime is refused.
        assert!(matches!(
            registry.offer(record(1, "db", 10_001, 2), 0, &LIMITS),
            Err(RecordError::TooFarInFuture { .. })
        ));
        assert!(matches!(
            registry.offer(record(2, "db", u64::MAX, 1), 0, &LIMITS),
            Err(RecordError::TooFarInFuture { .. })
        ));
    }

    #[test]
    fn replica_set_is_the_closest_nodes_root_first() {
        let key = Key::from_u128(1000);
        let ids = |v: &[u128]| v.iter().map(|&x| NodeId::from_u128(x)).collect::<Vec<_>>();
        let leaf = ids(&[990, 1003, 1020, 900, 2000]);
        assert_eq!(
            replica_set(key, NodeId::from_u128(1011), &leaf, 3),
            ids(&[1003, 990, 1011])
        );
        assert_eq!(
            replica_set(key, NodeId::from_u128(1000), &leaf, 1),
            ids(&[1000])
        );
        assert_eq!(replica_set(key, NodeId::from_u128(5), &[], 3), ids(&[5]));
    }

    #[test]
    fn newly_pushed_reports_only_new_members() {
        let mut registry = Registry::default();
        let ids = |v: &[u128]| v.iter().map(|&x| NodeId::from_u128(x)).collect::<Vec<_>>();
        assert_eq!(registry.newly_pushed("web", &ids(&[1, 2])), ids(&[1, 2]));
        assert_eq!(registry.newly_pushed("web", &ids(&[2, 3])), ids(&[3]));
        assert!(registry.newly_pushed("web", &ids(&[2, 3])).is_empty());
    }

    #[test]
    fn providers_are_ranked_by_rtt_then_freshness_failed_last() {
        let records: Vec<ServiceRecord> = [(1, 5), (2, 6), (3, 7), (4, 8)]
            .iter()
            .map(|&(seed, seq)| record(seed, "web", 1_000, seq).record)
            .collect();
        let id = |seed: u8| Identity::from_seed([seed; 32]).node_id();
        let rtt = |p: NodeId| {
            if p == id(1) {
                Some(Duration::from_millis(30))
            } else if p == id(2) {
                Some(Duration::from_millis(10))
            } else {
                None
            }
        };
        let ranked = rank_providers(records, rtt, |p| p == id(2));
        let order: Vec<NodeId> = ranked.iter().map(|r| r.provider).collect();
        // 2 is fastest but failed recently: last. 1 has an RTT; then 4 (newer) before 3.
        assert_eq!(order, vec![id(1), id(4), id(3), id(2)]);
    }
}
