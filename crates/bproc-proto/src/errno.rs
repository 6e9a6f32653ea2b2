//! Error codes carried in [`crate::Message::Error`]: Linux errno values plus BProc's own.
//!
//! The numbers are those of BProc 4.0 (`sys/bproc_common.h`) so that the C library can hand
//! them to callers unchanged as `errno`.

/// Operation not permitted.
pub const EPERM: i32 = 1;
/// No such file or directory (no such node).
pub const ENOENT: i32 = 2;
/// No such process.
pub const ESRCH: i32 = 3;
/// Interrupted (a launch whose ghosts were killed as they were made).
pub const EINTR: i32 = 4;
/// I/O error.
pub const EIO: i32 = 5;
/// Try again.
pub const EAGAIN: i32 = 11;
/// Permission denied.
pub const EACCES: i32 = 13;
/// Argument list too long (a launch's arguments and environment over the limit).
pub const E2BIG: i32 = 7;
/// Resource busy.
pub const EBUSY: i32 = 16;
/// Invalid argument.
pub const EINVAL: i32 = 22;
/// No space left (state string too long).
pub const ENOSPC: i32 = 28;
/// Function not implemented (unknown request).
pub const ENOSYS: i32 = 38;
/// No data available (BProc's ENOATTR).
pub const ENODATA: i32 = 61;
/// Protocol error.
pub const EPROTO: i32 = 71;
/// Operation not supported.
pub const EOPNOTSUPP: i32 = 95;
/// Timed out (a client gave up waiting for the master).
pub const ETIMEDOUT: i32 = 110;

/// Invalid node number.
pub const BE_INVALIDNODE: i32 = 300;
/// Node is down.
pub const BE_NODEDOWN: i32 = 301;
/// Move to same node.
pub const BE_SAMENODE: i32 = 302;
/// Slave node died.
pub const BE_SLAVEDIED: i32 = 303;
/// Invalid process ID.
pub const BE_INVALIDPROC: i32 = 304;

/// BProc's text for its own codes, `None` for ordinary errno values.
pub fn bproc_text(code: i32) -> Option<&'static str> {
    Some(match code.abs() {
        BE_INVALIDNODE => "Invalid node number",
        BE_NODEDOWN => "Node is down",
        BE_SAMENODE => "Move to same node",
        BE_SLAVEDIED => "Slave node died",
        BE_INVALIDPROC => "Invalid process ID",
        _ => return None,
    })
}
