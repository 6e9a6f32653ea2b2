//! cluster tests
