//! test harness: clusters, commands, readiness
