//! Process checkpoint from a program (libbproc's `bproc_dump`): the calling process writes
//! itself to an fd as a process image, from which [`bproc_sys::restore`] starts a copy that
//! returns from the same call. Moving between nodes builds on the same image.

use std::os::fd::{AsRawFd, BorrowedFd};

pub use bproc_sys::ckpt::Resumed;

use crate::BprocError;

/// Send libraries on the library list by content too (BProc's `BPROC_DUMP_LIBS`).
pub const DUMP_LIBS: i32 = 1;
/// Send the executable by content (`BPROC_DUMP_EXEC`).
pub const DUMP_EXEC: i32 = 2;
/// Send other files by content (`BPROC_DUMP_OTHER`).
pub const DUMP_OTHER: i32 = 4;
/// BProc's default: everything by content except the libraries on the list.
pub const DUMP_DEFAULT: i32 = DUMP_EXEC | DUMP_OTHER;

/// The library list: files every machine has at the same path, so an image names them
/// instead of carrying them. Without a list from the master it is the system library
/// directories.
pub fn on_library_list(path: &str) -> bool {
    ["/lib/", "/lib64/", "/usr/lib/", "/usr/lib64/"].iter().any(|d| path.starts_with(d))
}

/// Writes the calling process to `out` (BProc's `bproc_dump`): `flags` choose what goes by
/// content ([`DUMP_LIBS`], [`DUMP_EXEC`], [`DUMP_OTHER`]); the rest is named by path and must
/// be identical where the image is restored. Returns [`Resumed::Dumped`] here and
/// [`Resumed::Restored`] in each restored copy. Refuses with `EBUSY` (before writing anything)
/// a process with several threads, sockets or pipes at fds 3 and up, or shared memory.
pub fn dump(out: BorrowedFd<'_>, flags: i32) -> Result<Resumed, BprocError> {
    let exe = std::fs::read_link("/proc/self/exe")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let by_ref = |path: &str| {
        let by_content = if path == exe {
            DUMP_EXEC
        } else if on_library_list(path) {
            DUMP_LIBS
        } else {
            DUMP_OTHER
        };
        flags & by_content == 0
    };
    let skip = [out.as_raw_fd()];
    let opts = bproc_sys::ckpt::DumpOptions { by_ref: &by_ref, skip_fds: &skip };
    Ok(bproc_sys::ckpt::checkpoint(out, &opts)?)
}
