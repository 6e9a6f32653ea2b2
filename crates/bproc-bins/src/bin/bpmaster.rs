//! bpmaster
fn main() {}
