//! The bproc wire protocol, without I/O.
//!
//! Every message on every bproc link (master ↔ slave over TCP, client ↔ master over a Unix
//! socket) is one *frame*: a fixed 16-byte [`Header`] followed by a body of at most
//! [`MAX_BODY`] bytes. This crate turns bytes into [`Message`]s and back. It never touches a
//! socket, so the daemons, the blocking client library and the fuzzer all share one decoder.
//!
//! Decoding is bounded: the header's length is checked against [`MAX_BODY`] before anything is
//! allocated, every string and list inside the body is checked against its own `MAX_*` limit,
//! and trailing bytes are an error. A message type this version does not know decodes to
//! [`Message::Unknown`] so that the receiver can answer it with an error instead of dropping the
//! connection.
//!
//! ```
//! use bproc_proto::{decode, encode, Message};
//! let bytes = encode(7, &Message::NodeList);
//! assert_eq!(decode(&bytes).unwrap(), (7, Message::NodeList));
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod codec;
pub mod conn;
pub mod errno;
mod frame;
mod msg;
mod parts;
mod refusal;
#[cfg(feature = "samples")]
pub mod samples;
#[cfg(feature = "serde")]
pub mod view;
pub mod wire;

/// BProc's master port: the TCP port slaves connect to unless configured otherwise.
pub const DEFAULT_PORT: u16 = 2223;
/// The master's client socket when `$BPROC_SOCKET` is not set.
pub const DEFAULT_SOCKET: &str = "/run/bproc/master.sock";

pub use codec::{DecodeError, Reader, Writer};
pub use frame::{
    check, decode, decode_body, encode, encode_into, Header, TreeFrames, HEADER_LEN, MAGIC,
    MAX_BODY, VERSION,
};
pub use msg::{Message, MESSAGE_TYPES};
pub use parts::{
    split_tree, tree_width, CopyLink, CopyOpts, CopyRequest, CopyTask, Creds, Endpoint, ExitStatus,
    FdIo, IoSpec, LibOp, NodeAction, NodeInfo, NodeStatus, ProcChange, ProcEntry, ProcSpec,
    ProcStat, SlaveProc, StagedRef, TreeEntry, GHOST_FORKED, MAX_ARGS, MAX_ATTR_NAME,
    MAX_ATTR_VALUE, MAX_COPY_ITEMS, MAX_FD, MAX_FD_IO, MAX_LAUNCH_TEXT, MAX_NODES, MAX_PATH,
    MAX_PROCS, MAX_STAGED, MAX_STATE_LEN, MAX_TEXT, NODE_CLIENT, NODE_MASTER,
};
pub use refusal::Refusal;
