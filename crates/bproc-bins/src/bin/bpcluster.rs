//! bpcluster
fn main() {}
