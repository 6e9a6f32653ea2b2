//! Checkpoint and restore: the two halves of moving a process, in user space.
//!
//! - [`dump`]: the calling process writes itself, all its threads included, as a
//!   `bproc-image` at a call point (`checkpoint`), or a program is dumped at its first
//!   instruction (`exec_dump`).
//! - [`restore`]: a new process (or a ghost, in place) is made from an image by system call
//!   injection under ptrace, with the pid its caller chose.
//! - [`inline`]: a copy of an image for a machine that lacks some of the files it names,
//!   carrying their pages.
//! - `threads`: holding the other threads of the dumping process still and reading their
//!   state.
//!
//! The image format is `bproc-image`; starting the process to restore into (`clone3` with a
//! chosen pid, the identity switch) is `bproc-sys`. Like `bproc-sys`, this crate needs
//! `unsafe` (inline assembly, signal handlers, the ptrace requests nix has no wrapper for,
//! memory seen as bytes), each block with the invariants it relies on; tracing, waiting and
//! remote memory otherwise go through nix's safe wrappers.
#![allow(unsafe_code)]
#![deny(missing_docs)]

pub mod dump;
pub mod inline;
pub mod restore;
mod threads;

pub use dump::{checkpoint, exec_dump, CkptError, DumpOptions, Resumed};
