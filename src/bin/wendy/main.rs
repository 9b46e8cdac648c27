//! The `wendy` command-line tool.
fn main() {}
