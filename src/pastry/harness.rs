//! In-memory test harness.
