//! bpmaster daemon library
