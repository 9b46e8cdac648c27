//! Benchmarks that compare Wendy against baselines in one run (ratios, never timed unit tests).
//!
//! The CLI (`wendy bench ...`) prints these; the logic lives here so other tools can reuse it.

pub mod link;
