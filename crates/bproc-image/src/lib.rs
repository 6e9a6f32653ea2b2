//! bproc's process image: what a process that moves (or checkpoints itself) becomes on the
//! wire or in a file, and what the restorer reads back. This crate only encodes and decodes;
//! it never touches a process, a file or a socket.
//!
//! ```text
//!  preamble (20 bytes)
//!  +----------------+-------------+-----------------+-----------------+
//!  | magic BPROCIMG | version u32 | header len u32  | header CRC32 u32|
//!  +----------------+-------------+-----------------+-----------------+
//!  header (header len bytes, at most MAX_HEADER; bproc-proto's codec: big-endian
//!  integers, u32-length strings and lists, each bounded): machine, process state, regions
//!  chunks, one per run of saved pages, then the end
//!  +-----------+---------+-------------+--------------+
//!  | addr u64  | len u32 | CRC32 u32   | len bytes    |   addr, len page-aligned,
//!  +-----------+---------+-------------+--------------+   len ≤ MAX_CHUNK, inside a region
//!  | u64::MAX  | 0       | chunks u32  |                  the end: how many chunks came
//!  +-----------+---------+-------------+
//! ```
//!
//! Every length is checked before anything is allocated, and a decoded header re-encodes to
//! the same bytes. Pages not in any chunk are zero after a restore (never touched before the
//! dump); regions by reference take their pages from the named file, except those in chunks.

use bproc_proto::wire::{Bytes, Exactly, Fixed, Flag, Int, List, Nested, Text, Wire, Within};
use bproc_proto::{wire_enum, wire_struct, DecodeError, Reader, Writer};
use thiserror::Error;

/// The first 8 bytes of every image.
pub const MAGIC: [u8; 8] = *b"BPROCIMG";
/// The format version this crate reads and writes (3: the other threads).
pub const VERSION: u32 = 3;
/// Bytes in the preamble.
pub const PREAMBLE_LEN: usize = 20;
/// Bytes in a chunk head (and in the end).
pub const CHUNK_HEAD_LEN: usize = 16;
/// Largest header.
pub const MAX_HEADER: usize = 4 << 20;
/// Largest chunk of page data.
pub const MAX_CHUNK: u32 = 4 << 20;
/// Most memory regions in one image (Linux's default `vm.max_map_count` is 65530).
pub const MAX_REGIONS: usize = 1 << 16;
/// Page size the image is laid out in.
pub const PAGE: u64 = 4096;
/// A huge page (x86-64's 2 MiB): a dump cuts long runs of pages where one starts, and a
/// restore asks for them where the chunks fill them whole.
pub const HUGE_PAGE: u64 = 2 << 20;
/// First address past user space on x86-64 (47-bit).
pub const USER_END: u64 = 1 << 47;

const MAX_TEXT: usize = 4096;

/// Why an image was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ImageError {
    /// Not an image at all.
    #[error("not a bproc process image (bad magic)")]
    BadMagic,
    /// Made by another version of this format.
    #[error("process image format version {got}; this bproc reads version {ours}")]
    BadVersion {
        /// The image's.
        got: u32,
        /// Ours.
        ours: u32,
    },
    /// The header is longer than allowed.
    #[error("process image header of {0} bytes is over the limit")]
    HeaderTooLong(u32),
    /// A checksum does not match: the image was damaged.
    #[error("process image damaged: {0} checksum mismatch")]
    Checksum(&'static str),
    /// A field could not be decoded.
    #[error("process image header: {0}")]
    Decode(#[from] DecodeError),
    /// The regions or a chunk do not describe a sane address space.
    #[error("process image: {0}")]
    Layout(String),
}

wire_struct! {
    /// The machine an image was made on; a restore elsewhere must match it.
    #[derive(Debug, Clone, PartialEq, Eq, Default)]
    pub struct Machine {
        /// `uname -m`.
        pub arch: String => Text("arch", MAX_TEXT),
        /// `uname -r`: the vDSO's code and the kernel's behaviour depend on it.
        pub kernel: String => Text("kernel", MAX_TEXT),
        /// SHA-256 of the vDSO's bytes.
        pub vdso_hash: [u8; 32] => Fixed("vdso hash"),
        /// SHA-256 of the CPU's feature flags (libraries pick code paths by them at startup).
        pub cpu_hash: [u8; 32] => Fixed("cpu hash"),
    }
}

wire_struct! {
    /// One signal's disposition, as the kernel's `struct sigaction` holds it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct SigAction {
        /// Signal number, 1–64.
        pub signal: u8 => Within("signal", 1..=64),
        /// Handler address (or `SIG_IGN` = 1).
        pub handler: u64 => Int("handler"),
        /// `SA_*` flags.
        pub flags: u64 => Int("sa_flags"),
        /// `sa_restorer`.
        pub restorer: u64 => Int("restorer"),
        /// Signals blocked while the handler runs.
        pub mask: u64 => Int("sa_mask"),
    }
}

wire_struct! {
    /// The kernel-side memory layout fields (`prctl(PR_SET_MM_MAP)`), from `/proc/PID/stat`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct MmFields {
        /// Code start.
        pub start_code: u64 => Int("mm field"),
        /// Code end.
        pub end_code: u64 => Int("mm field"),
        /// Data start.
        pub start_data: u64 => Int("mm field"),
        /// Data end.
        pub end_data: u64 => Int("mm field"),
        /// Heap start.
        pub start_brk: u64 => Int("mm field"),
        /// Current break.
        pub brk: u64 => Int("mm field"),
        /// Stack start.
        pub start_stack: u64 => Int("mm field"),
        /// Arguments start.
        pub arg_start: u64 => Int("mm field"),
        /// Arguments end.
        pub arg_end: u64 => Int("mm field"),
        /// Environment start.
        pub env_start: u64 => Int("mm field"),
        /// Environment end.
        pub env_end: u64 => Int("mm field"),
    }
}

impl MmFields {
    /// The fields in `struct prctl_mm_map`'s order (and the image's).
    pub fn to_array(&self) -> [u64; 11] {
        [
            self.start_code,
            self.end_code,
            self.start_data,
            self.end_data,
            self.start_brk,
            self.brk,
            self.start_stack,
            self.arg_start,
            self.arg_end,
            self.env_start,
            self.env_end,
        ]
    }
}

wire_struct! {
    /// A mapping the kernel makes itself (`[vdso]`, `[vvar]`, `[vvar_vclock]`): moved, not
    /// copied.
    #[derive(Debug, Clone, PartialEq, Eq, Default)]
    pub struct Special {
        /// Its name in `/proc/PID/maps`.
        pub name: String => Text("special name", 64),
        /// Start address.
        pub start: u64 => Int("special start"),
        /// End address.
        pub end: u64 => Int("special end"),
    }
}

wire_enum! {
    /// Where a region's pages come from.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Source ("region source", "region source") {
        /// Zero pages, plus the chunks (heap, stack, anonymous memory).
        0 Anonymous,
        /// A private mapping of a file sent by content: like [`Source::Anonymous`] (the path is
        /// kept for `/proc/PID/maps`-style reports only).
        1 Copied {
            /// The file it mapped.
            path: String => Text("path", MAX_TEXT),
        },
        /// A private mapping of a file the restoring machine has too (a library on the library
        /// list): mapped from it, then the chunks over it (the pages the process changed).
        2 File {
            /// Path.
            path: String => Text("path", MAX_TEXT),
            /// Offset of the region's start in the file.
            offset: u64 => Int("file offset"),
            /// The file's size when dumped.
            size: u64 => Int("file size"),
            /// Its modification time when dumped (seconds, nanoseconds).
            mtime: (i64, u32) => (Int("mtime"), Int("mtime ns")),
        },
    }
}

wire_struct! {
    /// A regular file the process has open, reopened by path on the restoring machine.
    #[derive(Debug, Clone, PartialEq, Eq, Default)]
    pub struct OpenFile {
        /// Its fd (3 or more: stdio comes from the restorer).
        pub fd: i32 => Within("fd", 3..=1 << 20),
        /// Path.
        pub path: String => Text("path", MAX_TEXT),
        /// `open(2)` flags it has (from `/proc/PID/fdinfo`), without `O_CREAT`, `O_EXCL` and
        /// `O_TRUNC`.
        pub flags: i32 => Int("open flags"),
        /// Its file position.
        pub offset: u64 => Int("file offset"),
    }
}

/// Most open files an image carries.
pub const MAX_FILES: usize = 1024;
/// Most threads an image carries besides the dumping one.
pub const MAX_THREADS: usize = 4096;
/// Words in a thread's registers ([`Thread::regs`]).
pub const REGS: usize = 27;
/// Largest FPU and vector state of a thread (`xsave` area).
pub const MAX_XSTATE: usize = 16 << 10;

/// Indexes into [`Thread::regs`], which follow the kernel's `struct user_regs_struct`.
pub mod reg {
    /// `rip`.
    pub const RIP: usize = 16;
    /// `rsp`.
    pub const RSP: usize = 19;
    /// `fs` base (the thread pointer).
    pub const FS_BASE: usize = 21;
}

wire_struct! {
    /// A thread of the process other than the one that dumped it, as it was when stopped at an
    /// arbitrary instruction: all its registers and its own kernel state.
    #[derive(Debug, Clone, PartialEq, Eq, Default)]
    pub struct Thread {
        /// Its thread id.
        pub tid: i32 => Int("tid"),
        /// Its general registers, in `struct user_regs_struct` order ([`REGS`] words: r15, r14,
        /// r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx, rsi, rdi, orig_rax, rip, cs,
        /// eflags, rsp, ss, fs_base, gs_base, ds, es, fs, gs).
        pub regs: Vec<u64> => Exactly(REGS, Int("register")),
        /// Its FPU and vector registers as `xsave` lays them out (standard format; the first
        /// 512 bytes are the `fxsave` area), at most [`MAX_XSTATE`] bytes.
        pub xstate: Vec<u8> => Bytes("xstate", MAX_XSTATE),
        /// Its blocked signals.
        pub sigmask: u64 => Int("thread signal mask"),
        /// Its alternate signal stack: (address, flags, size); size 0 for none.
        pub altstack: (u64, i32, u64) =>
            (Int("thread altstack"), Int("thread altstack flags"), Int("thread altstack size")),
        /// Its rseq area: (address, length, signature); address 0 for none.
        pub rseq: (u64, u32, u32) =>
            (Int("thread rseq"), Int("thread rseq length"), Int("thread rseq signature")),
        /// Its robust futex list: (head, length).
        pub robust_list: (u64, u64) =>
            (Int("thread robust list"), Int("thread robust list length")),
        /// Its `set_tid_address` pointer.
        pub tid_address: u64 => Int("thread tid address"),
    }
}

/// Protection bits of a region.
pub mod prot {
    /// Readable.
    pub const READ: u8 = 1;
    /// Writable.
    pub const WRITE: u8 = 2;
    /// Executable.
    pub const EXEC: u8 = 4;
}

wire_struct! {
    /// One memory region.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Region {
        /// Start address (page-aligned).
        pub start: u64 => Int("region start"),
        /// End address (page-aligned, above `start`).
        pub end: u64 => Int("region end"),
        /// [`prot`] bits.
        pub prot: u8 => Within("prot", 0..=7),
        /// The main stack (grows down).
        pub stack: bool => Flag("stack flag"),
        /// Where its pages come from.
        pub source: Source => Nested,
    }
}

wire_struct! {
    /// Everything about a process except its page data.
    #[derive(Debug, Clone, PartialEq, Eq, Default)]
    pub struct Header {
        /// Where it was made.
        pub machine: Machine => Nested,
        /// Its pid when dumped.
        pub pid: i32 => Int("pid"),
        /// Its command name.
        pub comm: String => Text("comm", MAX_TEXT),
        /// Its executable's path.
        pub exe: String => Text("exe", MAX_TEXT),
        /// Its working directory.
        pub cwd: String => Text("cwd", MAX_TEXT),
        /// Its umask.
        pub umask: u32 => Int("umask"),
        /// Stack pointer to resume with.
        pub rsp: u64 => Int("rsp"),
        /// Instruction pointer to resume at.
        pub rip: u64 => Int("rip"),
        /// `fs` base (thread pointer).
        pub fs_base: u64 => Int("fs base"),
        /// `gs` base.
        pub gs_base: u64 => Int("gs base"),
        /// Blocked signals.
        pub sigmask: u64 => Int("signal mask"),
        /// Dispositions other than the default.
        pub sigactions: Vec<SigAction> => List("signal actions", 64, 33, Nested),
        /// Alternate signal stack: (address, flags, size); size 0 for none.
        pub altstack: (u64, i32, u64) =>
            (Int("altstack"), Int("altstack flags"), Int("altstack size")),
        /// Registered rseq area: (address, length, signature); address 0 for none.
        pub rseq: (u64, u32, u32) => (Int("rseq"), Int("rseq length"), Int("rseq signature")),
        /// Robust futex list: (head, length).
        pub robust_list: (u64, u64) => (Int("robust list"), Int("robust list length")),
        /// `set_tid_address` pointer.
        pub tid_address: u64 => Int("tid address"),
        /// Execution domain.
        pub personality: u32 => Int("personality"),
        /// A buffer in the process (address, length; 0 for none) where a restorer writes a
        /// NUL-terminated note for it: the path of the cluster socket where it now runs.
        pub mailbox: (u64, u32) => (Int("mailbox"), Int("mailbox length")),
        /// Memory layout fields.
        pub mm: MmFields => Nested,
        /// The auxiliary vector, as (type, value) pairs.
        pub auxv: Vec<(u64, u64)> => List("auxv", 256, 16, (Int("auxv type"), Int("auxv value"))),
        /// Resource limits: (resource, soft, hard).
        pub rlimits: Vec<(u32, u64, u64)> =>
            List("rlimits", 64, 20, (Int("resource"), Int("soft limit"), Int("hard limit"))),
        /// Kernel-made mappings to move into place.
        pub specials: Vec<Special> => List("special mappings", 16, 20, Nested),
        /// Regular files open at fds 3 and up.
        pub files: Vec<OpenFile> => List("open files", MAX_FILES, 20, Nested),
        /// Memory regions, in address order, not overlapping.
        pub regions: Vec<Region> => List("regions", MAX_REGIONS, 19, Nested),
        /// The other threads.
        pub threads: Vec<Thread> => List("threads", MAX_THREADS, THREAD_MIN, Nested),
        /// Where, from each thread's `fs` base, the C library keeps that thread's id (glibc's
        /// `struct pthread` caches it), so a thread restored under another id can be told; 0 when
        /// not found.
        pub tid_slot: u32 => Int("tid slot"),
    }
}

/// A chunk head or the end of the chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// `len` bytes for `addr` follow, with this CRC32.
    Data {
        /// Where they go.
        addr: u64,
        /// How many.
        len: u32,
        /// Their CRC32.
        crc: u32,
    },
    /// No more chunks; `chunks` came before it.
    End {
        /// The count, which the reader compares with what it saw.
        chunks: u32,
    },
}

impl Chunk {
    /// The 16 bytes of this head.
    pub fn encode(&self) -> [u8; CHUNK_HEAD_LEN] {
        let (addr, len, crc) = match *self {
            Chunk::Data { addr, len, crc } => (addr, len, crc),
            Chunk::End { chunks } => (u64::MAX, 0, chunks),
        };
        let mut b = [0u8; CHUNK_HEAD_LEN];
        b[..8].copy_from_slice(&addr.to_be_bytes());
        b[8..12].copy_from_slice(&len.to_be_bytes());
        b[12..].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// A head for `data` to be restored at `addr`.
    pub fn for_data(addr: u64, data: &[u8]) -> Chunk {
        Chunk::Data { addr, len: data.len() as u32, crc: crc32fast::hash(data) }
    }

    /// Parses a head, checking alignment and size (not yet that it lies in a region: see
    /// [`Header::check_chunk`]).
    pub fn parse(b: &[u8; CHUNK_HEAD_LEN]) -> Result<Chunk, ImageError> {
        let addr = u64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
        let len = u32::from_be_bytes(b[8..12].try_into().expect("4 bytes"));
        let crc = u32::from_be_bytes(b[12..].try_into().expect("4 bytes"));
        if addr == u64::MAX {
            if len != 0 {
                return Err(ImageError::Layout(format!("end marker with length {len}")));
            }
            return Ok(Chunk::End { chunks: crc });
        }
        if len == 0 || len > MAX_CHUNK || addr % PAGE != 0 || u64::from(len) % PAGE != 0 {
            return Err(ImageError::Layout(format!(
                "chunk at {addr:#x} of {len} bytes is not whole pages of at most {MAX_CHUNK}"
            )));
        }
        Ok(Chunk::Data { addr, len, crc })
    }

    /// Checks `data` against this head's CRC.
    pub fn verify(&self, data: &[u8]) -> Result<(), ImageError> {
        match *self {
            Chunk::Data { len, crc, .. }
                if data.len() == len as usize && crc32fast::hash(data) == crc =>
            {
                Ok(())
            }
            _ => Err(ImageError::Checksum("page data")),
        }
    }
}

/// The preamble's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preamble {
    /// Bytes of header that follow.
    pub header_len: u32,
    /// Their CRC32.
    pub header_crc: u32,
}

impl Preamble {
    /// Parses the first [`PREAMBLE_LEN`] bytes of an image.
    pub fn parse(b: &[u8; PREAMBLE_LEN]) -> Result<Preamble, ImageError> {
        if b[..8] != MAGIC {
            return Err(ImageError::BadMagic);
        }
        let word = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let version = word(8);
        if version != VERSION {
            return Err(ImageError::BadVersion { got: version, ours: VERSION });
        }
        let header_len = word(12);
        if header_len as usize > MAX_HEADER {
            return Err(ImageError::HeaderTooLong(header_len));
        }
        Ok(Preamble { header_len, header_crc: word(16) })
    }
}

impl Header {
    /// The preamble and header: the first bytes of the image.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(Vec::new());
        self.put(&mut w);
        let body = w.into_inner();
        let mut out = Vec::with_capacity(PREAMBLE_LEN + body.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Decodes the header bytes that follow `pre`, checking the CRC and the layout.
    pub fn decode(pre: &Preamble, body: &[u8]) -> Result<Header, ImageError> {
        if body.len() != pre.header_len as usize {
            return Err(ImageError::Layout("header length differs from the preamble's".into()));
        }
        if crc32fast::hash(body) != pre.header_crc {
            return Err(ImageError::Checksum("header"));
        }
        let mut r = Reader::new(body);
        let h = Header::get(&mut r)?;
        r.finish()?;
        h.check_layout()?;
        Ok(h)
    }

    /// Checks that a chunk lies inside one region.
    pub fn check_chunk(&self, chunk: &Chunk) -> Result<(), ImageError> {
        let Chunk::Data { addr, len, .. } = *chunk else { return Ok(()) };
        let end = addr.saturating_add(u64::from(len));
        let i = self.regions.partition_point(|r| r.end <= addr);
        match self.regions.get(i) {
            Some(r) if r.start <= addr && end <= r.end => Ok(()),
            _ => Err(ImageError::Layout(format!(
                "chunk {addr:#x}-{end:#x} is not inside one region"
            ))),
        }
    }

    fn check_layout(&self) -> Result<(), ImageError> {
        let mut prev_end = 0;
        for r in &self.regions {
            if r.start % PAGE != 0 || r.end % PAGE != 0 || r.start >= r.end || r.end > USER_END {
                return Err(ImageError::Layout(format!(
                    "region {:#x}-{:#x} is not whole user pages",
                    r.start, r.end
                )));
            }
            if r.start < prev_end {
                return Err(ImageError::Layout(format!(
                    "region {:#x}-{:#x} overlaps or precedes the one before",
                    r.start, r.end
                )));
            }
            prev_end = r.end;
        }
        for s in &self.specials {
            if s.start % PAGE != 0 || s.end % PAGE != 0 || s.start >= s.end || s.end > USER_END {
                return Err(ImageError::Layout(format!(
                    "{} at {:#x} is not whole pages",
                    s.name, s.start
                )));
            }
        }
        Ok(())
    }
}

/// Smallest encoding of a [`Thread`], which bounds the thread list's count.
const THREAD_MIN: usize = 4 + REGS * 8 + 4 + 76;

/// Reads an image from a stream, or from memory, the header first, then the chunks one at a
/// time, each checked against the header and its CRC.
#[derive(Debug)]
pub struct ImageReader<R> {
    input: Input<R>,
    header: Header,
    seen: u32,
}

/// An image held whole in memory and shared (by a node's ranks and the children it serves).
pub type SharedImage = std::sync::Arc<dyn AsRef<[u8]> + Send + Sync>;

/// Where an [`ImageReader`] reads.
enum Input<R> {
    Stream(R),
    /// A whole image in memory and how far it has been read: chunks are lent in place.
    Memory(SharedImage, usize),
}

impl<R: std::fmt::Debug> std::fmt::Debug for Input<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Input::Stream(r) => f.debug_tuple("Stream").field(r).finish(),
            Input::Memory(bytes, at) => {
                write!(f, "Memory({} bytes, at {at})", (**bytes).as_ref().len())
            }
        }
    }
}

impl<R: std::io::Read> Input<R> {
    /// The next `n` bytes: lent from memory, else read into `buf`.
    fn take<'a>(&'a mut self, n: usize, buf: &'a mut Vec<u8>) -> std::io::Result<&'a [u8]> {
        match self {
            Input::Stream(r) => {
                // Grown, never shrunk: clearing a chunk's worth of the buffer before each read
                // was a twentieth of a restore's work.
                if buf.len() < n {
                    buf.resize(n, 0);
                }
                r.read_exact(&mut buf[..n])?;
                Ok(&buf[..n])
            }
            Input::Memory(bytes, at) => {
                let start = *at;
                let Some(got) = (**bytes).as_ref().get(start..start.saturating_add(n)) else {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                };
                *at += n;
                Ok(got)
            }
        }
    }
}

impl<R: std::io::Read> ImageReader<R> {
    /// Reads and checks the preamble and header.
    pub fn open(r: R) -> Result<Self, ReadError> {
        Self::start(Input::Stream(r))
    }

    fn start(mut input: Input<R>) -> Result<Self, ReadError> {
        let mut buf = Vec::new();
        let pre: [u8; PREAMBLE_LEN] =
            input.take(PREAMBLE_LEN, &mut buf)?.try_into().expect("took PREAMBLE_LEN bytes");
        let pre = Preamble::parse(&pre)?;
        let header = Header::decode(&pre, input.take(pre.header_len as usize, &mut buf)?)?;
        Ok(ImageReader { input, header, seen: 0 })
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The next chunk's address and data (read into `buf`, or lent in place from an image in
    /// memory), or `None` at a correct end. Fails on a damaged or misplaced chunk, and on a
    /// missing or miscounting end.
    pub fn next_chunk<'a>(
        &'a mut self,
        buf: &'a mut Vec<u8>,
    ) -> Result<Option<(u64, &'a [u8])>, ReadError> {
        let Some(c @ Chunk::Data { addr, len, .. }) = self.next_head(buf)? else {
            return Ok(None);
        };
        let data = self.input.take(len as usize, buf)?;
        c.verify(data)?;
        self.seen = self.seen.saturating_add(1);
        Ok(Some((addr, data)))
    }

    /// [`ImageReader::next_chunk`] a piece at a time: hands the next chunk's data to `each`
    /// in pieces of at most `piece` bytes (whole pages), each added to the chunk's CRC just
    /// before, so that it is still in the cache when `each` copies it on. The chunk is
    /// checked after its last piece: `each` sees data not yet checked, and a caller must
    /// throw away what it wrote when this fails. `Ok(false)` at a correct end.
    pub fn next_chunk_pieces<E: From<ReadError>>(
        &mut self,
        buf: &mut Vec<u8>,
        piece: usize,
        mut each: impl FnMut(Piece<'_>) -> Result<(), E>,
    ) -> Result<bool, E> {
        let Some(Chunk::Data { addr, len, crc }) = self.next_head(buf)? else {
            return Ok(false);
        };
        let piece = piece.next_multiple_of(PAGE as usize).max(PAGE as usize);
        let mut sum = crc32fast::Hasher::new();
        let mut done = 0;
        while done < len as usize {
            let n = piece.min(len as usize - done);
            let data = self.input.take(n, buf).map_err(ReadError::from)?;
            sum.update(data);
            each(Piece { chunk: (addr, len), at: addr + done as u64, data })?;
            done += n;
        }
        if sum.finalize() != crc {
            return Err(ReadError::from(ImageError::Checksum("page data")).into());
        }
        self.seen = self.seen.saturating_add(1);
        Ok(true)
    }

    /// The next chunk's head, checked against the header; `None` at a correct end.
    fn next_head(&mut self, buf: &mut Vec<u8>) -> Result<Option<Chunk>, ReadError> {
        let head: [u8; CHUNK_HEAD_LEN] =
            self.input.take(CHUNK_HEAD_LEN, buf)?.try_into().expect("took CHUNK_HEAD_LEN bytes");
        match Chunk::parse(&head)? {
            Chunk::End { chunks } if chunks == self.seen => Ok(None),
            Chunk::End { chunks } => Err(ImageError::Layout(format!(
                "the end names {chunks} chunks, {} came",
                self.seen
            ))
            .into()),
            c => {
                self.header.check_chunk(&c)?;
                Ok(Some(c))
            }
        }
    }
}

/// A piece of a chunk's data, from [`ImageReader::next_chunk_pieces`].
#[derive(Debug)]
pub struct Piece<'a> {
    /// The chunk's address and length.
    pub chunk: (u64, u32),
    /// Where this piece goes.
    pub at: u64,
    /// Its bytes (not yet checked).
    pub data: &'a [u8],
}

impl<R> ImageReader<R> {
    /// Where the chunks not yet read will go (address and length each), when the image is
    /// in memory and they can be known before they are read: the listing stops at the end
    /// or at a chunk head that does not parse (which reading it will then refuse).
    pub fn chunks_ahead(&self) -> Option<Vec<(u64, u32)>> {
        let Input::Memory(bytes, at) = &self.input else { return None };
        let (bytes, mut at) = ((**bytes).as_ref(), *at);
        let mut out = Vec::new();
        while let Some(head) = bytes.get(at..at.saturating_add(CHUNK_HEAD_LEN)) {
            match Chunk::parse(head.try_into().expect("sliced CHUNK_HEAD_LEN bytes")) {
                Ok(Chunk::Data { addr, len, .. }) => out.push((addr, len)),
                _ => break,
            }
            at += CHUNK_HEAD_LEN + out.last().map_or(0, |c| c.1 as usize);
        }
        Some(out)
    }
}

impl ImageReader<std::io::Empty> {
    /// Reads an image held whole in memory, lending each chunk's data in place instead of
    /// copying it (a node restores a vector fork's ranks from its one copy).
    pub fn in_memory(bytes: SharedImage) -> Result<Self, ReadError> {
        Self::start(Input::Memory(bytes, 0))
    }
}

/// The header of the image in `image` and where its chunks start.
pub fn header_of(image: &[u8]) -> Result<(Header, usize), ImageError> {
    let short = || ImageError::Layout("the image ends inside its header".into());
    let pre: &[u8; PREAMBLE_LEN] =
        image.get(..PREAMBLE_LEN).ok_or_else(short)?.try_into().expect("sliced");
    let pre = Preamble::parse(pre)?;
    let end = PREAMBLE_LEN + pre.header_len as usize;
    let body = image.get(PREAMBLE_LEN..end).ok_or_else(short)?;
    Ok((Header::decode(&pre, body)?, end))
}

impl Header {
    /// The files this image maps by reference, each once, with the size and modification
    /// time they had: what a machine restoring it must have identical.
    pub fn by_reference(&self) -> Vec<(&str, u64, (i64, u32))> {
        let mut files: Vec<(&str, u64, (i64, u32))> = Vec::new();
        for r in &self.regions {
            if let Source::File { path, size, mtime, .. } = &r.source {
                if !files.iter().any(|f| f.0 == path) {
                    files.push((path, *size, *mtime));
                }
            }
        }
        files
    }
}

/// `image` with the regions that map a file by reference for which `inline(path)` holds
/// carried by content instead ([`Source::Copied`]), for a machine that lacks those files:
/// `read(path, offset, len)` gives the file's bytes there (fewer at its end). They come first,
/// so that the image's own chunks (the pages the process changed) land over them.
pub fn inline_files(
    image: &[u8],
    inline: impl Fn(&str) -> bool,
    mut read: impl FnMut(&str, u64, usize) -> std::io::Result<Vec<u8>>,
) -> Result<Vec<u8>, ReadError> {
    let (mut header, start) = header_of(image)?;
    // Where the chunks end, and how many there are.
    let mut at = start;
    let old = loop {
        let head: &[u8; CHUNK_HEAD_LEN] = image
            .get(at..at + CHUNK_HEAD_LEN)
            .ok_or_else(|| ImageError::Layout("the image ends without its end marker".into()))?
            .try_into()
            .expect("sliced");
        match Chunk::parse(head)? {
            Chunk::End { chunks } => break chunks,
            Chunk::Data { len, .. } => at += CHUNK_HEAD_LEN + len as usize,
        }
    };
    if at + CHUNK_HEAD_LEN != image.len() {
        return Err(ImageError::Layout("bytes after the image's end marker".into()).into());
    }
    let mut chunks = Vec::new();
    let mut added = 0u32;
    for r in &mut header.regions {
        let Source::File { path, offset, .. } = &r.source else { continue };
        if !inline(path) {
            continue;
        }
        let mut done = 0;
        while done < r.end - r.start {
            let want = (r.end - r.start - done).min(u64::from(MAX_CHUNK));
            let mut data = read(path, offset + done, want as usize)?;
            if data.is_empty() {
                // Past the file's end: no page there was ever readable.
                break;
            }
            data.truncate(want as usize);
            data.resize((data.len() as u64).next_multiple_of(PAGE) as usize, 0);
            chunks.extend_from_slice(&Chunk::for_data(r.start + done, &data).encode());
            chunks.extend_from_slice(&data);
            added += 1;
            done += data.len() as u64;
        }
        r.source = Source::Copied { path: path.clone() };
    }
    let mut out = header.encode();
    out.reserve(chunks.len() + at - start + CHUNK_HEAD_LEN);
    out.extend_from_slice(&chunks);
    out.extend_from_slice(&image[start..at]);
    out.extend_from_slice(&Chunk::End { chunks: old + added }.encode());
    Ok(out)
}

/// Reads a whole image from `r`, passing each chunk to `chunk(header, addr, data)`.
pub fn read_image<R: std::io::Read>(
    r: &mut R,
    mut chunk: impl FnMut(&Header, u64, &[u8]) -> Result<(), ImageError>,
) -> Result<Header, ReadError> {
    let mut reader = ImageReader::open(r)?;
    let mut buf = Vec::new();
    let header = reader.header.clone();
    while let Some((addr, data)) = reader.next_chunk(&mut buf)? {
        chunk(&header, addr, data)?;
    }
    Ok(header)
}

/// Why [`read_image`] failed.
#[derive(Debug, Error)]
pub enum ReadError {
    /// Reading failed (a short image is `UnexpectedEof`).
    #[error("reading the process image: {0}")]
    Io(#[from] std::io::Error),
    /// The image is bad.
    #[error(transparent)]
    Image(#[from] ImageError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread(tid: i32, fill: u8) -> Thread {
        Thread {
            tid,
            regs: (0..REGS as u64).map(|r| r * 0x1000 + u64::from(fill)).collect(),
            xstate: vec![fill; 40],
            sigmask: 1 << 9,
            altstack: (0x7f00_0001_0000, 2, 8192),
            rseq: (0x7ffd_0000_1000, 32, 0x5305_3053),
            robust_list: (0x7ffd_0000_2000, 24),
            tid_address: 0x7ffd_0000_2010,
        }
    }

    /// A header using every field (two of each list, every region source); its bytes are
    /// the golden fixture `tests/golden/header.hex`.
    pub(crate) fn sample() -> Header {
        Header {
            machine: Machine {
                arch: "x86_64".into(),
                kernel: "6.18.0".into(),
                vdso_hash: [1; 32],
                cpu_hash: [2; 32],
            },
            pid: 4242,
            comm: "app".into(),
            exe: "/usr/bin/app".into(),
            cwd: "/tmp".into(),
            umask: 0o022,
            rsp: 0x7ffd_0000_1000,
            rip: 0x5555_0000_1234,
            fs_base: 0x7f00_0000_0740,
            gs_base: 0x7f00_0000_0800,
            sigmask: 1 << 11,
            sigactions: vec![
                SigAction { signal: 10, handler: 0x5555_0000_2000, flags: 4, restorer: 7, mask: 1 },
                SigAction { signal: 64, handler: 1, flags: 0, restorer: 0, mask: u64::MAX },
            ],
            altstack: (0x7f00_0002_0000, 0, 65536),
            rseq: (0x7f00_0000_0ea0, 32, 0x5305_3053),
            robust_list: (0x7f00_0000_0a20, 24),
            tid_address: 0x7f00_0000_0a10,
            personality: 0x0040_0000,
            mailbox: (0x5555_0000_3000, 4096),
            mm: MmFields {
                start_code: 1,
                end_code: 2,
                start_data: 3,
                end_data: 4,
                start_brk: 5,
                brk: 6,
                start_stack: 7,
                arg_start: 8,
                arg_end: 9,
                env_start: 10,
                env_end: 11,
            },
            auxv: vec![(6, 4096), (33, 0x7fff_0000_0000)],
            rlimits: vec![(7, 1024, 4096), (3, 8 << 20, u64::MAX)],
            specials: vec![
                Special { name: "[vdso]".into(), start: 0x7fff_0000_0000, end: 0x7fff_0000_2000 },
                Special { name: "[vvar]".into(), start: 0x7fff_0000_2000, end: 0x7fff_0000_6000 },
            ],
            files: vec![
                OpenFile { fd: 3, path: "/tmp/log".into(), flags: 0o2001, offset: 77 },
                OpenFile { fd: 9, path: "/etc/hosts".into(), flags: 0, offset: 0 },
            ],
            regions: vec![
                Region {
                    start: 0x5555_0000_0000,
                    end: 0x5555_0000_2000,
                    prot: prot::READ | prot::EXEC,
                    stack: false,
                    source: Source::File {
                        path: "/usr/bin/app".into(),
                        offset: 0x1000,
                        size: 9000,
                        mtime: (-1_700_000_000, 5),
                    },
                },
                Region {
                    start: 0x5555_0000_2000,
                    end: 0x5555_0000_4000,
                    prot: prot::READ,
                    stack: false,
                    source: Source::Copied { path: "/tmp/data".into() },
                },
                Region {
                    start: 0x7ffd_0000_0000,
                    end: 0x7ffd_0002_0000,
                    prot: prot::READ | prot::WRITE,
                    stack: true,
                    source: Source::Anonymous,
                },
            ],
            threads: vec![thread(43, 9), thread(44, 10)],
            tid_slot: 0x2d0,
        }
    }

    fn image(h: &Header, chunks: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let mut out = h.encode();
        for (addr, data) in chunks {
            out.extend_from_slice(&Chunk::for_data(*addr, data).encode());
            out.extend_from_slice(data);
        }
        out.extend_from_slice(&Chunk::End { chunks: chunks.len() as u32 }.encode());
        out
    }

    #[test]
    fn an_image_reads_back() {
        let h = sample();
        let page = vec![7u8; 4096];
        let bytes = image(&h, &[(0x7ffd_0001_0000, page.clone())]);
        let mut got = Vec::new();
        let back = read_image(&mut bytes.as_slice(), |_, a, d| {
            got.push((a, d.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(back, h);
        assert_eq!(got, vec![(0x7ffd_0001_0000, page)]);
    }

    /// A region mapped by reference becomes one carried by content: the file's pages first
    /// (the last one padded with zeros, none past the file's end), then the image's own
    /// chunks over them; with nothing to inline the image is unchanged.
    #[test]
    fn files_inline_under_the_changed_pages() {
        let h = sample();
        let dirty = vec![9u8; 4096];
        let bytes = image(&h, &[(0x5555_0000_1000, dirty.clone())]);
        let file: Vec<u8> = (0..9000u32).map(|i| (i % 251) as u8).collect();
        let read = |path: &str, off: u64, len: usize| {
            assert_eq!(path, "/usr/bin/app");
            let off = (off as usize).min(file.len());
            Ok(file[off..(off + len).min(file.len())].to_vec())
        };
        assert_eq!(inline_files(&bytes, |_| false, read).unwrap(), bytes);
        let fat = inline_files(&bytes, |p| p == "/usr/bin/app", read).unwrap();
        let mut got = Vec::new();
        let back = read_image(&mut fat.as_slice(), |_, a, d| {
            got.push((a, d.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(back.regions[0].source, Source::Copied { path: "/usr/bin/app".into() });
        assert!(back.by_reference().is_empty());
        assert_eq!(h.by_reference(), vec![("/usr/bin/app", 9000, (-1_700_000_000, 5))]);
        let mut first = file[0x1000..].to_vec();
        first.resize(0x2000, 0);
        assert_eq!(got, vec![(0x5555_0000_0000, first), (0x5555_0000_1000, dirty)]);
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(inline_files(&trailing, |_| true, read).is_err());
        assert!(inline_files(&bytes[..bytes.len() - 1], |_| true, read).is_err());
    }

    /// In memory, the same chunks come back, lent from the image itself; a cut image is a
    /// short read, a damaged one is named as from a stream.
    #[test]
    fn an_image_in_memory_lends_its_chunks() {
        let h = sample();
        let page = vec![7u8; 4096];
        let bytes = std::sync::Arc::new(image(&h, &[(0x7ffd_0001_0000, page.clone())]));
        let mut r = ImageReader::in_memory(bytes.clone()).unwrap();
        assert_eq!(r.header(), &h);
        let mut buf = Vec::new();
        let (addr, data) = r.next_chunk(&mut buf).unwrap().unwrap();
        assert_eq!((addr, data), (0x7ffd_0001_0000, &page[..]));
        let inside = bytes.as_ptr_range();
        assert!(inside.contains(&data.as_ptr()), "lent, not copied");
        assert!(buf.capacity() < page.len());
        assert!(r.next_chunk(&mut buf).unwrap().is_none());
        let r = ImageReader::in_memory(bytes.clone()).unwrap();
        assert_eq!(r.chunks_ahead(), Some(vec![(0x7ffd_0001_0000, 4096)]));
        let cut = std::sync::Arc::new(bytes[..bytes.len() - 100].to_vec());
        let mut r = ImageReader::in_memory(cut).unwrap();
        let short = r.next_chunk(&mut buf);
        assert!(
            matches!(short, Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof)
        );
        let mut bad = (*bytes).clone();
        let last = bad.len() - CHUNK_HEAD_LEN - 1;
        bad[last] ^= 1;
        let mut r = ImageReader::in_memory(std::sync::Arc::new(bad)).unwrap();
        assert!(matches!(r.next_chunk(&mut buf), Err(ReadError::Image(_))));
    }

    /// A piece as a test sees it: its chunk's address and length, its address and length.
    type Seen = (u64, u32, u64, usize);

    /// Each piece of every chunk of `r`, and their bytes.
    fn pieces_of<R: std::io::Read>(r: &mut ImageReader<R>, piece: usize) -> (Vec<Seen>, Vec<u8>) {
        let (mut got, mut data, mut buf) = (Vec::new(), Vec::new(), Vec::new());
        while r
            .next_chunk_pieces::<ReadError>(&mut buf, piece, |p| {
                data.extend_from_slice(p.data);
                got.push((p.chunk.0, p.chunk.1, p.at, p.data.len()));
                Ok(())
            })
            .unwrap()
        {}
        (got, data)
    }

    /// Read in pieces, from a stream or from memory, the chunks come back whole and in
    /// order; a damaged chunk fails after its last piece.
    #[test]
    fn chunks_come_in_pieces() {
        let h = sample();
        let big: Vec<u8> = (0..5 * 4096).map(|i| (i % 251) as u8).collect();
        let chunks = [(0x7ffd_0001_0000, big.clone()), (0x7ffd_0001_8000, vec![7u8; 4096])];
        let bytes = image(&h, &chunks);
        let mut stream = ImageReader::open(&bytes[..]).unwrap();
        let mut memory = ImageReader::in_memory(std::sync::Arc::new(bytes.clone())).unwrap();
        let (from_stream, data) = pieces_of(&mut stream, 8192);
        let (from_memory, _) = pieces_of(&mut memory, 8000);
        let a = 0x7ffd_0001_0000;
        let want = vec![
            (a, 20480, a, 8192),
            (a, 20480, a + 8192, 8192),
            (a, 20480, a + 16384, 4096),
            (0x7ffd_0001_8000, 4096, 0x7ffd_0001_8000, 4096),
        ];
        assert_eq!(from_stream, want);
        assert_eq!(from_memory, want);
        assert_eq!(data[..big.len()], big[..]);
        let mut buf = Vec::new();
        let mut bad = bytes.clone();
        let first_data = bytes.len() - 2 * CHUNK_HEAD_LEN - 4096 - big.len();
        bad[first_data + 100] ^= 1;
        let mut r = ImageReader::open(&bad[..]).unwrap();
        let mut pieces = 0;
        let got = r.next_chunk_pieces::<ReadError>(&mut buf, 8192, |_| {
            pieces += 1;
            Ok(())
        });
        assert!(matches!(got, Err(ReadError::Image(ImageError::Checksum(_)))), "{got:?}");
        assert_eq!(pieces, 3, "every piece came before the check");
    }

    #[test]
    fn damage_is_named() {
        let h = sample();
        let bytes = image(&h, &[(0x7ffd_0001_0000, vec![7u8; 4096])]);
        let read = |b: &[u8]| read_image(&mut &b[..], |_, _, _| Ok(())).map(|_| ());
        let mut bad = bytes.clone();
        bad[PREAMBLE_LEN + 3] ^= 1;
        assert!(matches!(read(&bad), Err(ReadError::Image(ImageError::Checksum("header")))));
        let mut bad = bytes.clone();
        let last_data = bytes.len() - CHUNK_HEAD_LEN - 1;
        bad[last_data] ^= 1;
        assert!(matches!(read(&bad), Err(ReadError::Image(ImageError::Checksum("page data")))));
        assert!(matches!(read(&bytes[..bytes.len() - 1]), Err(ReadError::Io(_))));
        let mut bad = bytes.clone();
        bad[8..12].copy_from_slice(&9u32.to_be_bytes());
        assert!(matches!(read(&bad), Err(ReadError::Image(ImageError::BadVersion { got: 9, .. }))));
        // A chunk outside every region.
        let outside = image(&h, &[(0x1000, vec![0u8; 4096])]);
        assert!(matches!(read(&outside), Err(ReadError::Image(ImageError::Layout(_)))));
        // An end that miscounts.
        let mut short = h.encode();
        short.extend_from_slice(&Chunk::End { chunks: 1 }.encode());
        assert!(matches!(read(&short), Err(ReadError::Image(ImageError::Layout(_)))));
    }

    #[test]
    fn overlapping_regions_are_refused() {
        let mut h = sample();
        h.regions[1].start = h.regions[0].start;
        let bytes = h.encode();
        let pre = Preamble::parse(bytes[..PREAMBLE_LEN].try_into().unwrap()).unwrap();
        assert!(matches!(Header::decode(&pre, &bytes[PREAMBLE_LEN..]), Err(ImageError::Layout(_))));
    }

    /// The image's first bytes are the committed fixture, and decode back to the sample.
    /// After a deliberate format change (and a bump of `VERSION`), rewrite the fixture with
    /// `BPROC_BLESS=1 cargo test -p bproc-image golden`.
    #[test]
    fn header_matches_its_fixture() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/header.hex");
        let bytes = sample().encode();
        if std::env::var_os("BPROC_BLESS").is_some() {
            let text: String = bytes.chunks(32).map(|c| hex::encode(c) + "\n").collect();
            std::fs::write(&path, text).unwrap();
            return;
        }
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (write it with BPROC_BLESS=1)", path.display()));
        let fixture = hex::decode(text.split_whitespace().collect::<String>()).unwrap();
        assert!(fixture == bytes, "{}: the header encodes differently", path.display());
        let pre = Preamble::parse(fixture[..PREAMBLE_LEN].try_into().unwrap()).unwrap();
        assert_eq!(Header::decode(&pre, &fixture[PREAMBLE_LEN..]), Ok(sample()));
    }
}
