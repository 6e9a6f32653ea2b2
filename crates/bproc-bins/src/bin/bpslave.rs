//! bpslave
fn main() {}
