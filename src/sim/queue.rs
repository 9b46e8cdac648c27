//! The event queue: a binary heap ordered by virtual time, ties broken by insertion order (or,
//! for events pushed with [`EventQueue::push_late`], after every ordinary event of their time).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// A min-queue of events by `(time, sequence number)`, so equal times pop in push order and a
/// run is deterministic.
///
/// Sequence numbers of [`EventQueue::push`] count up from 0; [`EventQueue::push_late`] uses
/// `LATE | rank` instead, which sorts after every counted one.
/// The sequence-number bit of late events (a counter never reaches it).
const LATE: u64 = 1 << 63;

#[derive(Debug)]
pub(crate) struct EventQueue<E> {
    heap: BinaryHeap<Entry<E>>,
    next_seq: u64,
}

#[derive(Debug)]
struct Entry<E> {
    time: u64,
    seq: u64,
    event: E,
}

impl<E> PartialEq for Entry<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.seq) == (other.time, other.seq)
    }
}

impl<E> Eq for Entry<E> {}

impl<E> PartialOrd for Entry<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<E> Ord for Entry<E> {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap and we want the earliest event first.
        (other.time, other.seq).cmp(&(self.time, self.seq))
    }
}

impl<E> EventQueue<E> {
    /// An empty queue.
    pub(crate) fn new() -> Self {
        Self {
            heap: BinaryHeap::new(),
            next_seq: 0,
        }
    }

    /// Schedules `event` at `time` (microseconds of virtual time).
    pub(crate) fn push(&mut self, time: u64, event: E) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Entry { time, seq, event });
    }

    /// Schedules `event` at `time` after every event [`EventQueue::push`] puts at that time;
    /// such late events pop by `rank` (equal ranks in any order).
    pub(crate) fn push_late(&mut self, time: u64, rank: u32, event: E) {
        let seq = LATE | u64::from(rank);
        self.heap.push(Entry { time, seq, event });
    }

    /// The time of the earliest event.
    pub(crate) fn peek_time(&self) -> Option<u64> {
        self.heap.peek().map(|entry| entry.time)
    }

    /// Removes and returns the earliest event.
    pub(crate) fn pop(&mut self) -> Option<(u64, E)> {
        self.heap.pop().map(|entry| (entry.time, entry.event))
    }

    /// Number of queued events (including stale timers not yet popped).
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_by_time_then_push_order() {
        let mut q = EventQueue::new();
        q.push(30, "c");
        q.push(10, "a1");
        q.push(20, "b");
        q.push(10, "a2");
        q.push(10, "a3");
        assert_eq!(q.len(), 5);
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(
            order,
            vec![(10, "a1"), (10, "a2"), (10, "a3"), (20, "b"), (30, "c")]
        );
        assert!(q.pop().is_none());
    }

    #[test]
    fn late_events_follow_the_ordinary_ones_of_their_time_by_rank() {
        let mut q = EventQueue::new();
        q.push_late(10, 7, "late 7");
        q.push_late(10, 2, "late 2");
        q.push(10, "a");
        q.push(5, "early");
        q.push_late(20, 0, "next");
        q.push(10, "b");
        assert_eq!(q.peek_time(), Some(5));
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).map(|(_, e)| e).collect();
        assert_eq!(order, vec!["early", "a", "b", "late 2", "late 7", "next"]);
    }
}
