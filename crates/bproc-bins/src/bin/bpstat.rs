//! bpstat
fn main() {}
