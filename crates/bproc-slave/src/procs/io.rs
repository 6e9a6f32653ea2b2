//! A new process's fds as the slave prepares them, among them the connections to the
//! launcher.
//!
//! A forwarded fd is a TCP connection from this node to the launcher's listener (on the
//! master's address as this node sees it). The slave opens it before the process starts and
//! hands the socket to the process as its fd, so output flows from the process to the launcher
//! with no copy through any daemon, and TCP flow control bounds memory on both sides. The
//! connection opens with a 21-byte header: the launch's 16-byte token, the rank (u32,
//! big-endian) and the fd number (u8).

use std::ffi::CString;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::path::Path;

use bproc_proto::conn::IMAGE as IMAGE_FD;
use bproc_proto::errno::EINVAL;
use bproc_proto::{IoSpec, ProcSpec};
use bproc_sys::FdFile;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::info;

use super::Refusal;

/// The null device, opened once (read and write) while the daemon's root still has it: a
/// root given with `bpctl -r` need not have `/dev`. Each process gets its own fd for it.
pub(crate) fn null_device() -> std::io::Result<OwnedFd> {
    static NULL: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();
    let null = match NULL.get() {
        Some(null) => null,
        None => {
            let opened = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null")?;
            NULL.get_or_init(|| opened.into())
        }
    };
    null.try_clone()
}

/// Opens a connection to the launcher and sends its header.
pub(super) async fn open_to_launcher(
    master: Ipv4Addr,
    spec: &ProcSpec,
    rank: u32,
    fd: u8,
) -> std::io::Result<TcpStream> {
    let ip = spec.io_ip.unwrap_or(master);
    let mut s = TcpStream::connect(SocketAddrV4::new(ip, spec.io_port)).await?;
    s.set_nodelay(true)?;
    s.write_all(&bproc_proto::conn::header(&spec.token, rank, fd)).await?;
    Ok(s)
}

/// What one fd of a new process is, as the slave prepares it.
pub(super) enum Opened {
    /// This open file.
    Fd(OwnedFd),
    /// A file the process opens itself, with its own identity.
    File(FdFile),
    /// Nothing.
    Closed,
}

/// The fds of a new process, the latest word on each fd winning.
#[derive(Default)]
pub(super) struct Fds {
    pub(super) stdio: [Option<OwnedFd>; 3],
    pub(super) extra: Vec<(i32, OwnedFd)>,
    pub(super) files: Vec<FdFile>,
}

impl Fds {
    pub(super) fn set(&mut self, fd: i32, o: Opened) {
        self.extra.retain(|(n, _)| *n != fd);
        self.files.retain(|f| f.fd != fd);
        let slot = usize::try_from(fd).ok().and_then(|i| self.stdio.get_mut(i));
        match (o, slot) {
            (Opened::Fd(f), Some(s)) => *s = Some(f),
            (Opened::Fd(f), None) => self.extra.push((fd, f)),
            (Opened::File(f), slot) => {
                if let Some(s) = slot {
                    // Open until the process replaces it: the slot must hold something.
                    *s = None;
                }
                self.files.push(f);
            }
            (Opened::Closed, Some(s)) => *s = None,
            (Opened::Closed, None) => {}
        }
    }
}

/// Prepares `io` as fd `fd` of rank `rank` (whose ghost is `ghost`, 0 for none).
pub(super) async fn open_io(
    io: &IoSpec,
    fd: i32,
    master: Ipv4Addr,
    spec: &ProcSpec,
    rank: u32,
    ghost: i32,
) -> Result<Opened, Refusal> {
    let failed = |what: String, e: std::io::Error| Refusal {
        code: e.raw_os_error().unwrap_or(bproc_proto::errno::EIO),
        message: format!("fd {fd}: {what}: {e}"),
    };
    let path = |p: &str| {
        CString::new(p).map_err(|_| Refusal { code: EINVAL, message: format!("NUL in {p:?}") })
    };
    Ok(match io {
        IoSpec::Closed => Opened::Closed,
        IoSpec::Null => Opened::Fd(null_device().map_err(|e| failed("/dev/null".into(), e))?),
        IoSpec::File(p) if fd == 0 => Opened::File(FdFile::read(fd, path(p)?)),
        IoSpec::File(p) => Opened::File(FdFile::write(fd, path(p)?)),
        IoSpec::Open { path: p, flags, mode, offset } => {
            Opened::File(FdFile { fd, path: path(p)?, flags: *flags, mode: *mode, offset: *offset })
        }
        IoSpec::Forward => {
            let Ok(n) = u8::try_from(fd) else {
                return Err(Refusal {
                    code: EINVAL,
                    message: format!("fd {fd} cannot be forwarded"),
                });
            };
            let s = open_to_launcher(master, spec, rank, n)
                .await
                .and_then(|s| s.into_std())
                .map_err(|e| failed("cannot connect back to the launcher".into(), e))?;
            s.set_nonblocking(false).map_err(|e| failed("socket".into(), e))?;
            Opened::Fd(OwnedFd::from(s))
        }
        IoSpec::Rejoin { ip, port, token, rank } => {
            // A moved process's stream, joining its launcher's again as the same rank.
            let to = SocketAddrV4::new(ip.unwrap_or(master), *port);
            let n = u8::try_from(fd).unwrap_or(u8::MAX);
            let mut s =
                TcpStream::connect(to).await.map_err(|e| failed(format!("connect to {to}"), e))?;
            let _ = s.set_nodelay(true);
            let head = bproc_proto::conn::header(token, *rank, n);
            s.write_all(&head).await.map_err(|e| failed(format!("write to {to}"), e))?;
            let s = s.into_std().map_err(|e| failed("socket".into(), e))?;
            s.set_nonblocking(false).map_err(|e| failed("socket".into(), e))?;
            Opened::Fd(OwnedFd::from(s))
        }
        IoSpec::Connect { ip, port, send_info } => {
            let to = SocketAddrV4::new(ip.unwrap_or(spec.io_ip.unwrap_or(master)), *port);
            let mut s =
                TcpStream::connect(to).await.map_err(|e| failed(format!("connect to {to}"), e))?;
            if *send_info {
                // BProc's header: the process's pid on the front end, then the fd number.
                let mut info = [0u8; 8];
                info[..4].copy_from_slice(&ghost.to_ne_bytes());
                info[4..].copy_from_slice(&fd.to_ne_bytes());
                s.write_all(&info).await.map_err(|e| failed(format!("write to {to}"), e))?;
            }
            let s = s.into_std().map_err(|e| failed("socket".into(), e))?;
            s.set_nonblocking(false).map_err(|e| failed("socket".into(), e))?;
            Opened::Fd(OwnedFd::from(s))
        }
    })
}

/// Opens the connection that carries rank `rank`'s process image, from `from` (an address of
/// `None`: the master's), and says which of the files the image names this node has (under
/// `root`, a diskless node's, when given): at once when the launch lists them (a vector
/// fork's), else when the mover asks. With the connection, whether it has them all (then the
/// mover sends the image as it is, not a copy carrying some).
pub(crate) async fn connect_image(
    master: Ipv4Addr,
    spec: &ProcSpec,
    from: bproc_proto::Endpoint,
    rank: u32,
    root: Option<&Path>,
) -> Result<(TcpStream, bool), Refusal> {
    let to = SocketAddrV4::new(from.ip.unwrap_or(master), from.port);
    let failed = |e: std::io::Error| Refusal {
        code: e.raw_os_error().unwrap_or(bproc_proto::errno::EIO),
        message: format!("cannot fetch the process image from {to}: {e}"),
    };
    let mut s = TcpStream::connect(to).await.map_err(failed)?;
    let head = bproc_proto::conn::header(&spec.token, rank, IMAGE_FD);
    let (found, asked) = match &spec.image_files {
        Some(files) => {
            let answer = answer_for(files, root);
            s.write_all(&[&head[..], &answer].concat()).await.map_err(failed)?;
            (answer[4..].iter().filter(|a| **a == 1).count(), files.len())
        }
        None => {
            s.write_all(&head).await.map_err(failed)?;
            let wait = std::time::Duration::from_secs(30);
            match tokio::time::timeout(wait, answer_probe(&mut s, root)).await {
                Ok(r) => r.map_err(failed)?,
                Err(_) => return Err(failed(std::io::ErrorKind::TimedOut.into())),
            }
        }
    };
    if asked > 0 {
        info!("rank {rank}: {found} of {asked} files the image names are here");
    }
    Ok((s, found == asked))
}

/// Which of `files`, a process image's, this node has identical (under `root`, a diskless
/// node's, when given): the answer to a probe for them.
fn answer_for(files: &[bproc_proto::conn::FileId], root: Option<&Path>) -> Vec<u8> {
    let here = |f: &bproc_proto::conn::FileId| {
        let path = bproc_ckpt::restore::inside(root, &f.path);
        bproc_ckpt::restore::same_file(&path.to_string_lossy(), f.size, f.mtime)
    };
    bproc_proto::conn::encode_answer(&files.iter().map(here).collect::<Vec<_>>())
}

/// Reads an image sender's probe from `s` and answers which of the files it names this node
/// has identical (under `root`, a diskless node's, when given): how many, of how many.
async fn answer_probe<S>(s: &mut S, root: Option<&Path>) -> std::io::Result<(usize, usize)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use bproc_proto::conn;
    use tokio::io::AsyncReadExt;
    let bad = |e: bproc_proto::DecodeError| std::io::Error::other(e.to_string());
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await?;
    let mut body = vec![0u8; conn::probe_len(head).map_err(bad)?];
    s.read_exact(&mut body).await?;
    let files = conn::decode_probe(&body).map_err(bad)?;
    let answer = answer_for(&files, root);
    s.write_all(&answer).await?;
    Ok((answer[4..].iter().filter(|a| **a == 1).count(), files.len()))
}

/// [`connect_image`], as a blocking socket for the restore.
pub(super) async fn open_image(
    master: Ipv4Addr,
    spec: &ProcSpec,
    from: bproc_proto::Endpoint,
    rank: u32,
    root: Option<&Path>,
) -> Result<std::net::TcpStream, Refusal> {
    let failed = |e: std::io::Error| Refusal {
        code: e.raw_os_error().unwrap_or(bproc_proto::errno::EIO),
        message: format!("cannot fetch the process image: {e}"),
    };
    let s = connect_image(master, spec, from, rank, root).await?.0.into_std().map_err(failed)?;
    s.set_nonblocking(false).map_err(failed)?;
    // A sender that stops mid-image must not hold the spawner thread for ever.
    s.set_read_timeout(Some(std::time::Duration::from_secs(30))).map_err(failed)?;
    Ok(s)
}

/// What a child writes on its tree connection, in place of a file's hash, for the image.
pub(crate) const IMAGE_REQUEST: [u8; 32] = [0xff; 32];

/// What a child writes on its tree connection, in place of a file's hash, once its subtree
/// fetches nothing more: the parent keeps the connection for its next part.
pub(crate) const FETCHES_DONE: [u8; 32] = [0xfe; 32];

/// Asks the parent node for the launch's image on tree connection `conn` (held: `s`), saying
/// at once which of the files it names (`files`, as the launch lists them) this node has
/// (under `root`, a diskless node's, when given), and, when the connection goes back for the
/// parent's next part, that nothing more will be fetched ([`FETCHES_DONE`]); returns the
/// image's length, whose bytes follow on `s`. A failure shuts the connection down: the
/// parent may have taken it back already.
pub(crate) async fn request_image(
    s: &mut TcpStream,
    conn: &super::TreeConn,
    files: &[bproc_proto::conn::FileId],
    root: Option<&Path>,
) -> std::io::Result<u64> {
    use tokio::io::AsyncReadExt;
    let mut ask = IMAGE_REQUEST.to_vec();
    ask.extend(answer_for(files, root));
    if conn.returns() {
        ask.extend(FETCHES_DONE);
        conn.told();
    }
    let len = match s.write_all(&ask).await {
        Ok(()) => s.read_u64().await,
        Err(e) => Err(e),
    };
    if len.is_err() {
        shut_down(s);
    }
    len
}

/// Ends both directions of `s` now (whoever holds it next reads the end).
pub(crate) fn shut_down(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let _ = nix::sys::socket::shutdown(s.as_raw_fd(), nix::sys::socket::Shutdown::Both);
}

/// How long a restore reading from the parent node waits for more of the image.
const PARENT_SILENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// The launch's image as the parent node sends it, read by a restore as it arrives (a node
/// with one rank and no children keeps no copy of its own). The tree connection stays taken
/// until the restore is done; it is shut down unless the image was read whole, so nothing
/// else on it reads the rest as a reply.
pub(crate) struct ParentImage {
    /// The tree connection's socket, read without tokio (its fd duplicated).
    socket: std::net::TcpStream,
    /// Bytes of the image not yet read.
    left: u64,
    /// The tree connection, held (let go before the connection itself, which then goes
    /// back when this was its last user).
    _held: tokio::sync::OwnedMutexGuard<TcpStream>,
    _conn: std::sync::Arc<super::TreeConn>,
}

/// Asks the parent node on tree connection `conn` for the launch's image, for a restore to
/// read as it comes.
pub(super) async fn parent_image(
    conn: &std::sync::Arc<super::TreeConn>,
    files: &[bproc_proto::conn::FileId],
    root: Option<&Path>,
) -> Result<ParentImage, Refusal> {
    let failed = |e: std::io::Error| Refusal {
        code: e.raw_os_error().unwrap_or(bproc_proto::errno::EIO),
        message: format!("cannot fetch the process image from the parent node: {e}"),
    };
    let mut held = conn.stream().clone().lock_owned().await;
    let asked = request_image(&mut held, conn, files, root);
    let len = match tokio::time::timeout(PARENT_SILENCE, asked).await {
        Ok(r) => r.map_err(failed)?,
        Err(_) => {
            shut_down(&held);
            return Err(failed(std::io::ErrorKind::TimedOut.into()));
        }
    };
    let fd = std::os::fd::AsFd::as_fd(&*held).try_clone_to_owned().map_err(failed)?;
    Ok(ParentImage {
        socket: std::net::TcpStream::from(fd),
        left: len,
        _held: held,
        _conn: conn.clone(),
    })
}

impl ParentImage {
    /// Bytes of the image not yet read.
    pub(super) fn left(&self) -> u64 {
        self.left
    }

    /// Lets the tree connection go after a restore; `whole` says the image was read to its
    /// last byte (else the connection is shut down).
    pub(super) fn done(self, whole: bool) {
        if !(whole && self.left == 0) {
            let _ = self.socket.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl std::io::Read for ParentImage {
    /// Reads what has come, waiting for more when nothing has (the socket is tokio's,
    /// non-blocking); the end of the image reads as the end.
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        loop {
            match self.socket.read(&mut buf[..want]) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    self.left -= n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
                    let wait = PollTimeout::try_from(PARENT_SILENCE).unwrap_or(PollTimeout::MAX);
                    match poll(&mut fds, wait) {
                        Ok(0) => {
                            let secs = PARENT_SILENCE.as_secs();
                            let why = format!("the parent node sent nothing for {secs} s");
                            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, why));
                        }
                        Ok(_) | Err(nix::Error::EINTR) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}
