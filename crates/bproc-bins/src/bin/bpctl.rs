//! bpctl
fn main() {}
