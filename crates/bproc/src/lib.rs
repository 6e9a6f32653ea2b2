//! bproc client library: talk to bpmaster, node sets and node specs
