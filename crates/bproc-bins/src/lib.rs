//! What the daemons' `main`s share: how they start ([`daemon`]: in the background with a
//! readiness report, in the foreground, or under systemd with [`notify`]) and where their
//! logs go ([`logging`]: stderr or syslog).

pub mod daemon;
pub mod logging;
pub mod notify;

/// A command-line mistake. A daemon's `main` prints it first, then the usage, so the line that
/// says what was wrong is not lost above the list of options.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);
