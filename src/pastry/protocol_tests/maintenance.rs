//! Routing-table maintenance: row requests as the overlay grows.

use super::*;

/// The `RowRequest`s a node sent: (to, row).
fn row_requests(outputs: &Drained) -> Vec<(NodeId, u8)> {
    outputs
        .transmits
        .iter()
        .filter_map(|t| match t {
            Transmit::Send {
                to,
                msg: Message::RowRequest { row },
            } => Some((to.id, *row)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_node_asks_again_for_a_row_with_holes_once_the_overlay_has_grown() {
    // A node that joined a small overlay keeps that time's holes (branches that did not exist
    // yet) unless it asks again when the overlay has grown.
    let me = 0xab58_u128 << 112;
    let mut node = lone(me);
    let row_mates = [peer(0xa100_u128 << 112), peer(0xa200_u128 << 112)];
    for p in row_mates {
        meet(&mut node, p);
    }
    assert_eq!(node.routing_table().row(1).len(), 2);
    // A dense leaf set: the estimated size (about 16 / (16 * 2^-16) = 65536) passes the sizes
    // at which rows 0 to 3 are expected to be full.
    let mut asked = Vec::new();
    for i in 1..=8u128 {
        for p in [peer(me + (i << 100)), peer(me - (i << 100))] {
            asked.extend(row_requests(&meet(&mut node, p)));
        }
    }
    // Row 1 is asked for, of one of its entries; so are the deeper rows the leaves opened
    // (the estimate, 2^28 at the end, passes them too). Each growth pass asks once, and an
    // entry of a row is asked for that row.
    assert!(asked.iter().any(|&(_, row)| row == 1), "{asked:?}");
    assert!(asked.len() <= 3 * 6, "{asked:?}");
    let me_id = NodeId::from_u128(me);
    for (to, row) in &asked {
        assert_eq!(me_id.shared_prefix_len(*to), usize::from(*row), "{to}");
    }
    assert!(asked
        .iter()
        .filter(|&&(_, row)| row == 1)
        .all(|(to, _)| row_mates.iter().any(|p| p.id == *to)));
    // More leaf-set changes at about the same size ask nothing more.
    let outputs = meet(&mut node, peer(me + (1 << 99)));
    assert!(node.leaf_set().contains(NodeId::from_u128(me + (1 << 99))));
    assert_eq!(row_requests(&outputs), vec![]);
}

#[test]
fn a_small_overlay_does_not_pass_for_a_large_one() {
    // Regression: with at most L nodes both leaf-set sides hold the same members, and the size
    // estimated from the span of the two far members was far too large, so growth passes
    // fired (and deep holes were passed on) in overlays of a dozen nodes.
    let me = 0x8_u128 << 124;
    let mut node = lone(me);
    let mut asked = Vec::new();
    for k in 1..=6u128 {
        for p in [peer((0x8 + k) << 124), peer((0x8 - k) << 124)] {
            asked.extend(row_requests(&meet(&mut node, p)));
        }
    }
    assert_eq!(node.routing_table().row(0).len(), 12);
    assert_eq!(asked, vec![]);
}
