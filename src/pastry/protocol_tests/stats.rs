//! Stats: messages counted by kind, with their encoded sizes. (Control traffic in a steady
//! overlay and lookups under churn are measured by the simulator's scenarios:
//! `integration/sim.rs`.)

use super::*;

#[test]
fn stats_count_messages_by_kind_with_exact_sizes() {
    let mut node = lone(1 << 100);
    let p = peer((1 << 100) + 5);
    node.handle_message(
        Time::ZERO,
        p,
        Message::Probe {
            nonce: 3,
            active: true,
            leaf_set: vec![],
            failed: vec![],
        },
    );
    let outputs = drain(&mut node);
    let sent: Vec<&Message> = outputs
        .transmits
        .iter()
        .filter_map(|t| match t {
            Transmit::Send { msg, .. } => Some(msg),
            _ => None,
        })
        .collect();
    let replies: Vec<_> = sent
        .iter()
        .filter(|m| m.kind() == MessageKind::ProbeReply)
        .collect();
    assert_eq!(replies.len(), 1);
    let counter = node.stats().sent_of(MessageKind::ProbeReply);
    assert_eq!(counter.msgs, 1);
    assert_eq!(
        counter.bytes as usize,
        postcard::to_allocvec(replies[0]).unwrap().len()
    );
    assert_eq!(node.stats().total().msgs, sent.len() as u64);
}
