//! What the daemons' `main`s share: how they start ([`daemon`]: in the background with a
//! readiness report, in the foreground, or under systemd with [`notify`]) and where their
//! logs go ([`logging`]: stderr or syslog).

pub mod daemon;
pub mod logging;
pub mod notify;
