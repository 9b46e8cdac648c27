//! Tests on the NAT testbed ([`testbed`]): real `wendy node` processes in network namespaces,
//! some behind nftables NAT routers. They need root, `ip` and `nft`, and skip with one line
//! otherwise.
// The harness is shared with tests that are turned on as features land.
#![allow(dead_code, unreachable_pub)]

pub mod inside;
pub mod overlay;
pub mod testbed;

mod figures;
mod mesh;
mod mode_switch;
mod punch;
mod punch_mixed;
mod punch_paths;
mod reachability;
mod relay_kill;
