//! bpslave daemon library
