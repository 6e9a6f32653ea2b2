//! Launch trees: a launch reaches many nodes without the master sending to each. The master
//! gives each of a few nodes its part of the launch (a [`Message::SpawnTree`] listing that
//! node's ranks and the subtree below it); every node starts its own ranks and passes the
//! rest on, split among at most `width` children, over TCP connections between slaves. Each
//! rank's outcome goes straight to the master on the node's own link, so nothing flows back up
//! the tree.
//!
//! A tree part is a sealed frame (an HMAC under the cluster key follows it), so a child knows
//! it comes from the cluster without a handshake's round trips, which cost a 1024-node launch
//! a quarter of its time. A node takes each launch nonce once, and only while the master's
//! clock (as its pings tell it) says the launch is recent, so a recorded part cannot be
//! replayed.
//!
//! A child that cannot be reached has its ranks reported as on a down node, and its part
//! goes on to the next node of the same branch, so one dead node costs only its own ranks.
//!
//! The tree port is open to anyone who can reach it, so nothing is spent on a connection
//! before its part is proved: a part must arrive whole within [`HANDSHAKE_TIMEOUT`], its
//! bytes are kept only as they come (the header's length is not an allocation), at most
//! [`MAX_PENDING`] connections are read at once (a new one ends the oldest), and refusals are
//! logged once per interval.
//!
//! On diskless nodes the program travels down the same tree: a node fetches the files its
//! cache lacks from its parent over the tree connection (the first level from the launcher),
//! and serves its children from its own cache, fetching once what several of them ask for.
//!
//! A vector fork's process image travels the same way (BProc's vrfork passed it down a tree
//! of re-senders too): a node fetches it once, from the mover at the first level and from its
//! parent below, restores its ranks from that copy and serves it to its children. A single
//! move streams its image straight from the mover into the restore instead.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

use bproc_link::guard::{Pending, Refusals};
use bproc_link::{read_sealed, seal, LinkError, HANDSHAKE_TIMEOUT};
use bproc_proto::conn::FileId;
use bproc_proto::errno::{BE_NODEDOWN, EIO};
use bproc_proto::{split_tree, Creds, Message, ProcSpec, TreeEntry, TreeFrames};
use bproc_sys::bigbuf::{BigBuf, Filler, Filling};
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::procs::TreeConn;
use crate::procs::IMAGE_REQUEST;
use crate::{kept, procs, proxy, Options, Outbox};

/// What a tree node needs to start ranks and pass a tree on.
pub(crate) struct Ctx {
    pub opts: Options,
    pub procs: procs::Procs,
    pub outbox: Outbox,
    pub link: proxy::LinkState,
    /// Connections to children kept for later launches.
    pub kept: kept::Kept,
}

/// The master's clock minus ours, in milliseconds, from its latest ping.
static MASTER_CLOCK: AtomicI64 = AtomicI64::new(0);

/// How old a tree part may be, by the master's clock, when it arrives.
const MAX_AGE_MS: i64 = 5 * 60 * 1000;

/// Nonces of launches taken lately, oldest first (bounded: parts older than
/// [`MAX_AGE_MS`] are refused anyway).
static SEEN: Mutex<Option<(HashSet<u64>, VecDeque<u64>)>> = Mutex::new(None);
const SEEN_MAX: usize = 1 << 16;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Notes the master's time of day (from `Conf` and `Ping`).
pub(crate) fn master_time(ms: u64) {
    MASTER_CLOCK.store(ms as i64 - now_ms(), Ordering::Relaxed);
}

/// Whether the launch with `nonce` is new here (and remembers it).
pub(crate) fn first_time(nonce: u64) -> bool {
    let mut g = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let (set, order) = g.get_or_insert_with(Default::default);
    if !set.insert(nonce) {
        return false;
    }
    order.push_back(nonce);
    if order.len() > SEEN_MAX {
        if let Some(old) = order.pop_front() {
            set.remove(&old);
        }
    }
    true
}

/// One launch tree's common part.
#[derive(Clone)]
pub(crate) struct Launch {
    pub launch: u64,
    pub nonce: u64,
    pub time_ms: u64,
    pub size: u32,
    pub creds: Creds,
    pub spec: ProcSpec,
    pub width: u32,
}

/// Most tree connections read at once before their part is proved.
const MAX_PENDING: usize = 256;

/// Refusal tree connections, logged once per interval.
pub(crate) static REFUSED: Refusals = Refusals::new("tree port");

/// Accepts tree connections from other slaves until the daemon ends.
pub(crate) async fn serve(listener: TcpListener, ctx: Arc<Ctx>) {
    let pending = Pending::new(MAX_PENDING);
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let ctx = ctx.clone();
                let evicted = pending.spawn(move |place| async move {
                    if let Err(e) = take(stream, &ctx, place).await {
                        REFUSED.refuse(format_args!("launch tree from {peer}: {e}"));
                    }
                });
                if evicted {
                    REFUSED.refuse(format_args!(
                        "{MAX_PENDING} connections are sending launch parts; dropped the oldest"
                    ));
                }
            }
            Err(e) => {
                REFUSED.refuse(format_args!("accept failed: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Why a connection to the tree port brought no launch (logged with the peer's address).
#[derive(Debug, Error)]
pub(crate) enum TakeError {
    /// The part is older than [`MAX_AGE_MS`] by the master's clock: a replay, or clocks
    /// that disagree (this node's own pings set its view of the master's clock).
    #[error("launch {launch} is {secs} s old by the master's clock; refused (a replay, or a clock that jumped: launch again)")]
    Old {
        /// The launch.
        launch: u64,
        /// Its age.
        secs: i64,
    },
    /// Something other than a launch part arrived.
    #[error("expected SpawnTree, received {0}")]
    Unexpected(&'static str),
    /// The part could not be read or proved (not sealed with this cluster's key).
    #[error("{0}")]
    Link(LinkError),
    /// Nothing whole arrived within [`HANDSHAKE_TIMEOUT`].
    #[error("no launch arrived in time")]
    Timeout,
    /// Bytes came after a part whose subtree fetches through the connection.
    #[error("launch {0}: bytes after a part that fetches through its connection; refused")]
    Trailing(u64),
}

/// Reads sealed tree parts from a parent; `place` is the connection's place among those not
/// yet proved. A plain launch's connection is kept for the parent's next launch to this node
/// (see [`kept`]), and an image launch's once its subtree has the image; one whose subtree
/// fetches files stays open while the subtree may fetch through it, and closes then.
async fn take(
    s: TcpStream,
    ctx: &Arc<Ctx>,
    place: bproc_link::guard::Admitted,
) -> Result<(), TakeError> {
    use tokio::io::AsyncWriteExt;
    let _ = s.set_nodelay(true);
    // A part comes whole in one read, not one for its header, one for its body and one for
    // its seal.
    let mut s = tokio::io::BufReader::with_capacity(PART_BUFFER, s);
    let mut place = Some(place);
    let mut retiring = None;
    loop {
        let frame =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, read_sealed(&mut s, &ctx.opts.key)).await;
        let (l, entries) = match frame {
            Ok(Ok(Message::SpawnTree {
                launch,
                nonce,
                time_ms,
                size,
                creds,
                spec,
                width,
                entries,
            })) => (Launch { launch, nonce, time_ms, size, creds, spec, width }, entries),
            // The parent closed a kept connection between parts.
            Ok(Err(LinkError::Closed)) if place.is_none() => return Ok(()),
            Ok(Ok(other)) => return Err(TakeError::Unexpected(other.name())),
            Ok(Err(e)) => return Err(TakeError::Link(e)),
            Err(_) => return Err(TakeError::Timeout),
        };
        if let Some(place) = place.take() {
            place.admit();
        }
        let age = now_ms() + MASTER_CLOCK.load(Ordering::Relaxed) - l.time_ms as i64;
        if age.abs() > MAX_AGE_MS {
            return Err(TakeError::Old { launch: l.launch, secs: age / 1000 });
        }
        if !plain(&l.spec) {
            // The parent sends nothing more until this subtree asks it for files or the
            // image, over the bare connection.
            if !s.buffer().is_empty() {
                return Err(TakeError::Trailing(l.launch));
            }
            if !keepable(&l.spec) {
                run(ctx.clone(), l, entries, procs::Source::Parent(TreeConn::new(s.into_inner())));
                return Ok(());
            }
            // Once the subtree has its image, the connection waits for the parent's next part.
            let (conn, back) = TreeConn::returning(s.into_inner());
            run(ctx.clone(), l, entries, procs::Source::Parent(conn));
            let Ok((mut back, told)) = back.await else { return Ok(()) };
            // The image's request told the parent (which may have sent the next part since,
            // or which reads the end of a fetch that failed); without one, it is told now.
            if !told && (!idle(&back) || back.write_all(&procs::FETCHES_DONE).await.is_err()) {
                return Ok(());
            }
            s = tokio::io::BufReader::with_capacity(PART_BUFFER, back);
            if !next_part(&mut s, &mut retiring).await? {
                return Ok(());
            }
            continue;
        }
        // Nothing is fetched for a plain launch, from the parent or anyone.
        run(ctx.clone(), l, entries, procs::Source::Launcher);
        if !next_part(&mut s, &mut retiring).await? {
            return Ok(());
        }
    }
}

/// Waits on a kept connection for the parent's next part; whether one is coming. A child
/// that stops waiting (it waited [`kept::WAIT_FOR`], or too many connections wait) first
/// tells the parent, which takes the connection no more, and still takes the parts already
/// on their way for [`kept::RETIRE_GRACE`] (`retiring`: until when), so that none is lost.
async fn next_part(
    s: &mut tokio::io::BufReader<TcpStream>,
    retiring: &mut Option<tokio::time::Instant>,
) -> Result<bool, TakeError> {
    use tokio::io::AsyncBufReadExt;
    let _waiting = match retiring {
        Some(_) => None,
        None => match kept::Waiting::enter() {
            Some(place) => Some(place),
            None => {
                *retiring = Some(kept::retire(s.get_mut()).await);
                None
            }
        },
    };
    loop {
        let until = retiring.unwrap_or_else(|| tokio::time::Instant::now() + kept::WAIT_FOR);
        match tokio::time::timeout_at(until, s.fill_buf()).await {
            Ok(Ok(next)) => return Ok(!next.is_empty()),
            Ok(Err(e)) => return Err(TakeError::Link(e.into())),
            Err(_) if retiring.is_some() => return Ok(false),
            Err(_) => *retiring = Some(kept::retire(s.get_mut()).await),
        }
    }
}

/// Room for a launch part read at once: a leaf's part with a caller's usual environment (a
/// bigger one is read through). Allocated for every connection read, proved or not.
const PART_BUFFER: usize = 4 << 10;

/// Whether a launch needs nothing from the parent node once its part is there (no files for
/// diskless nodes, no process image), so the part's connection is kept for the next one.
fn plain(spec: &ProcSpec) -> bool {
    spec.files.is_empty() && spec.image.is_none()
}

/// Whether a launch's connection is kept for the next one: a plain launch's, and an image
/// launch's once its subtree has the image (the child says so with
/// [`procs::FETCHES_DONE`]). One that fetches files for diskless nodes is closed after it.
fn keepable(spec: &ProcSpec) -> bool {
    spec.files.is_empty()
}

/// Whether a connection given back by a launch's subtree is whole and has nothing unread: a
/// fetch that failed part way shut it down or left bytes in it.
fn idle(s: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(s.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// A vector fork's image as this node holds it, fetched once and shared by its ranks and
/// its children in the tree.
type SharedImage = Arc<tokio::sync::OnceCell<Result<Arc<NodeImage>, Arc<ImageError>>>>;

/// This node's copy of a vector fork's image: it has every file the image names (it was
/// asked before the image came), and a child lacking some gets a copy carrying them. When its
/// length is known first (a node with every file, or a parent's copy) the copy is handed out
/// as soon as it is mapped, and children are sent each piece as it arrives.
pub(crate) struct NodeImage {
    /// The image, in memory of its own, filled from the front and never written again.
    bytes: Arc<Filling>,
    /// How far the fetch has come.
    fill: tokio::sync::watch::Receiver<Fill>,
    /// The files it names, read from it once it is whole (for a child that lacks some).
    files: std::sync::OnceLock<Vec<FileId>>,
    /// Copies made for children that lack some of them.
    copies: bproc_ckpt::inline::Copies,
}

/// How far a node's copy of an image has come.
#[derive(Clone)]
enum Fill {
    /// This many bytes are in, more to come.
    Filling(usize),
    /// All of it is in.
    Whole,
    /// The fetch failed part way.
    Failed(Arc<ImageError>),
}

impl NodeImage {
    /// Waits until the image is whole.
    async fn whole(&self) -> Result<(), Arc<ImageError>> {
        let mut fill = self.fill.clone();
        let end = fill.wait_for(|f| !matches!(f, Fill::Filling(_))).await.map(|f| f.clone());
        match end {
            Ok(Fill::Failed(e)) => Err(e),
            Ok(_) => Ok(()),
            Err(_) => Err(Arc::new(ImageError::Stopped)),
        }
    }

    /// The files the image names; it must be whole.
    fn files(&self) -> &[FileId] {
        self.files.get_or_init(|| bproc_ckpt::inline::named_in(self.bytes.filled()))
    }
}

/// Why this node has no copy of a vector fork's process image; shared, as the copy would
/// be, by the ranks and children that wanted it.
#[derive(Debug, Error)]
pub(crate) enum ImageError {
    /// The launch names no image to fetch.
    #[error("cannot fetch the process image: the launch is not an image launch")]
    NotImage,
    /// The mover could not be reached or refused (the message names it and the image).
    #[error("{0}")]
    Connect(String),
    /// The mover's connection failed while the image came.
    #[error("cannot fetch the process image from the mover: {0}")]
    Mover(std::io::Error),
    /// The parent node's connection failed while the image came.
    #[error("cannot fetch the process image from the parent node: {0}")]
    Parent(std::io::Error),
    /// The mover could not send an image this node can restore (a file it names changed).
    #[error("the mover refused to send the process image: {0}")]
    Refused(String),
    /// The mover or the parent node sent less than it announced.
    #[error("cannot fetch the process image: {from} sent {got} of {len} bytes")]
    Short {
        /// "the mover" or "the parent node".
        from: &'static str,
        /// Bytes received.
        got: usize,
        /// Bytes announced.
        len: u64,
    },
    /// The mover or the parent node is too slow, or stopped sending.
    #[error(
        "the process image did not arrive within 60 s (the mover or the parent node stopped \
         sending)"
    )]
    Timeout,
    /// The task fetching it ended without saying how (the slave is stopping).
    #[error("cannot fetch the process image: the fetch stopped")]
    Stopped,
}

/// This node's copy of the launch's image, fetching it the first time (as soon as it is
/// mapped, when its length is known first; else once it is whole).
async fn image_of(
    ctx: &Ctx,
    l: &Launch,
    source: &procs::Source,
    cell: &SharedImage,
) -> Result<Arc<NodeImage>, Arc<ImageError>> {
    cell.get_or_init(|| fetch_image(ctx, l, source)).await.clone()
}

/// The root under which this node's files are found (a diskless node's), if not `/`.
fn files_root(ctx: &Ctx) -> Option<&std::path::Path> {
    ctx.opts.diskless.as_ref().map(|d| d.root.as_path())
}

/// Fetches the launch's image from `source` (the mover at the tree's first level, the parent
/// node below) in a task of its own, which goes on filling the copy after handing it out.
async fn fetch_image(
    ctx: &Ctx,
    l: &Launch,
    source: &procs::Source,
) -> Result<Arc<NodeImage>, Arc<ImageError>> {
    let fetch = Fetch {
        master: master_ip(ctx),
        root: files_root(ctx).map(std::path::Path::to_path_buf),
        spec: l.spec.clone(),
        launch: l.launch,
        source: source.clone(),
    };
    let (begun, copy) = tokio::sync::oneshot::channel();
    tokio::spawn(fetch.run(begun));
    copy.await.unwrap_or_else(|_| Err(Arc::new(ImageError::Stopped)))
}

/// What a fetch of a launch's image needs, owned by its task.
struct Fetch {
    /// The master's address, where an image endpoint without one is.
    master: Ipv4Addr,
    /// A diskless node's root, under which the image's files are looked for.
    root: Option<std::path::PathBuf>,
    /// The launch's spec: the image's endpoint, files and length.
    spec: ProcSpec,
    /// The launch, for the log.
    launch: u64,
    /// Where the image comes from.
    source: procs::Source,
}

/// Where a fetch hands out the node's copy: once, as soon as there is one or it failed.
type Begun = Option<tokio::sync::oneshot::Sender<Result<Arc<NodeImage>, Arc<ImageError>>>>;

impl Fetch {
    async fn run(
        self,
        begun: tokio::sync::oneshot::Sender<Result<Arc<NodeImage>, Arc<ImageError>>>,
    ) {
        let mut begun = Some(begun);
        let (fill, filled) = tokio::sync::watch::channel(Fill::Filling(0));
        let fetched =
            tokio::time::timeout(Duration::from_secs(60), self.fetch(&mut begun, &fill, filled))
                .await;
        let result = match fetched {
            Ok(r) => r,
            Err(_) => {
                if let procs::Source::Parent(conn) = &self.source {
                    if let Ok(s) = conn.stream().try_lock() {
                        procs::shut_down(&s);
                    }
                }
                Err(ImageError::Timeout)
            }
        };
        match result {
            Ok(len) => {
                let from = match self.source {
                    procs::Source::Launcher => "the mover",
                    procs::Source::Parent(_) => "the parent node",
                };
                info!(
                    "launch {}: fetched the process image ({len} bytes) from {from}",
                    self.launch
                );
                fill.send_replace(Fill::Whole);
            }
            Err(e) => {
                let e = Arc::new(e);
                match begun.take() {
                    Some(tx) => {
                        let _ = tx.send(Err(e));
                    }
                    None => {
                        fill.send_replace(Fill::Failed(e));
                    }
                }
            }
        }
    }

    /// Fetches the image, handing the copy out through `begun`; its length when whole.
    async fn fetch(
        &self,
        begun: &mut Begun,
        fill: &tokio::sync::watch::Sender<Fill>,
        filled: tokio::sync::watch::Receiver<Fill>,
    ) -> Result<usize, ImageError> {
        let root = self.root.as_deref();
        match &self.source {
            procs::Source::Launcher => {
                let from = self.spec.image.ok_or(ImageError::NotImage)?;
                let (mut s, all) = procs::connect_image(self.master, &self.spec, from, 0, root)
                    .await
                    .map_err(|r| ImageError::Connect(r.message))?;
                // With every file here, the mover sends the image as it is, of the length the
                // launch says; else a copy carrying some, of a length it does not say.
                let Some(len) = self.spec.image_len.filter(|_| all) else {
                    let mut data = BigBuf::new();
                    read_to_end(&mut s, &mut data).await.map_err(ImageError::Mover)?;
                    if let Some(why) = bproc_proto::conn::refusal(&data) {
                        return Err(ImageError::Refused(why));
                    }
                    let got = data.len();
                    hand_out(begun, &Arc::new(Filling::from(data)), filled);
                    return Ok(got);
                };
                let (buf, mut filler) = mapped(len).map_err(ImageError::Mover)?;
                hand_out(begun, &buf, filled);
                fill_from(&mut s, &mut filler, fill).await.map_err(ImageError::Mover)?;
                if let Some(why) = bproc_proto::conn::refusal(buf.filled()) {
                    return Err(ImageError::Refused(why));
                }
                match filler.len() {
                    got if got as u64 == len => Ok(got),
                    got => Err(ImageError::Short { from: "the mover", got, len }),
                }
            }
            procs::Source::Parent(conn) => {
                let mut s = conn.stream().lock().await;
                let files = self.spec.image_files.as_deref().unwrap_or_default();
                let len = procs::request_image(&mut s, conn, files, root)
                    .await
                    .map_err(ImageError::Parent)?;
                // The length is the parent's word: memory is mapped for it, but taken only as
                // bytes come.
                let read = match mapped(len) {
                    Ok((buf, mut filler)) => {
                        hand_out(begun, &buf, filled);
                        fill_from(&mut *s, &mut filler, fill).await.map(|()| filler.len())
                    }
                    Err(e) => Err(e),
                };
                if !matches!(read, Ok(got) if got as u64 == len) {
                    // The rest must not be read as the parent's next part.
                    procs::shut_down(&s);
                }
                match read.map_err(ImageError::Parent)? {
                    got if got as u64 == len => Ok(got),
                    got => Err(ImageError::Short { from: "the parent node", got, len }),
                }
            }
        }
    }
}

/// A copy of `len` bytes mapped whole, with its filler.
fn mapped(len: u64) -> std::io::Result<(Arc<Filling>, Filler)> {
    let len = usize::try_from(len).map_err(|_| std::io::ErrorKind::OutOfMemory)?;
    Filling::new(len)
}

/// Hands the node's copy `buf` out to the ranks and children waiting for it.
fn hand_out(begun: &mut Begun, buf: &Arc<Filling>, fill: tokio::sync::watch::Receiver<Fill>) {
    let image = NodeImage {
        bytes: buf.clone(),
        fill,
        files: std::sync::OnceLock::new(),
        copies: Default::default(),
    };
    if let Some(tx) = begun.take() {
        let _ = tx.send(Ok(Arc::new(image)));
    }
}

/// Reads `r` into `filler` until it is full or `r` ends, telling `fill` of each piece once
/// the first bytes show an image, not a refusal (which is never passed on).
async fn fill_from(
    r: &mut (impl tokio::io::AsyncRead + Unpin),
    filler: &mut Filler,
    fill: &tokio::sync::watch::Sender<Fill>,
) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt;
    let magic = bproc_proto::conn::REFUSAL.len();
    loop {
        let spare = filler.spare();
        if spare.is_empty() {
            return Ok(());
        }
        let piece = spare.len().min(1 << 20);
        match r.read(&mut spare[..piece]).await? {
            0 => return Ok(()),
            n => filler.advance(n),
        }
        let bytes = filler.filled();
        if bytes.len() >= magic && !bytes.starts_with(&bproc_proto::conn::REFUSAL) {
            fill.send_replace(Fill::Filling(bytes.len()));
        }
    }
}

/// Reads `r` to its end into `buf`, a piece at a time straight into the buffer's memory.
async fn read_to_end(
    r: &mut (impl tokio::io::AsyncRead + Unpin),
    buf: &mut BigBuf,
) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt;
    loop {
        match r.read(buf.spare(1 << 20)?).await? {
            0 => return Ok(()),
            n => buf.advance(n),
        }
    }
}

/// Starts this node's ranks (`entries[0]`) and passes the rest of the tree on.
pub(crate) fn run(ctx: Arc<Ctx>, mut l: Launch, entries: Vec<TreeEntry>, source: procs::Source) {
    let Some((me, rest)) = entries.split_first() else { return };
    if !first_time(l.nonce) {
        warn!("launch {}: already taken here; a replay is ignored", l.launch);
        return;
    }
    let parts = split_tree(rest, l.width);
    // A copy of a vector fork's image for this node's ranks and children to share; one rank
    // and no children restores from the image as it comes instead (no copy to fill, and its
    // pages go into the process while the rest arrives).
    let shared: Option<SharedImage> = (l.spec.image.is_some() && me.ranks.len() + parts.len() > 1)
        .then(|| Arc::new(tokio::sync::OnceCell::new()));
    // The subtree first: its nodes then start while this one starts its own ranks. The
    // children's parts share the launch and all but their entries' bytes.
    if !parts.is_empty() {
        let frames = Arc::new(frames_of(&mut l));
        // The launch for the tasks of parts that do not go at once, copied only for them.
        let mut shared_l: Option<Arc<Launch>> = None;
        for part in parts {
            if plain(&l.spec) && send_now(&ctx, &l, &frames, part, &source) {
                continue;
            }
            let l = shared_l.get_or_insert_with(|| Arc::new(l.clone())).clone();
            let (ctx, frames) = (ctx.clone(), frames.clone());
            let (part, source, shared) = (part.to_vec(), source.clone(), shared.clone());
            tokio::spawn(async move { forward(&ctx, &l, &frames, part, &source, shared).await });
        }
    }
    // Each rank takes a launch of its own, the last this one: a leaf's one rank copies
    // nothing (the environment alone is a few dozen strings).
    let mut l = Some(l);
    for (i, &rank) in me.ranks.iter().enumerate() {
        let ghost = me.pids.get(i).copied().filter(|p| *p > 0);
        let port = me.ports.get(i).copied().unwrap_or(0);
        let Some(l) = (if i + 1 == me.ranks.len() { l.take() } else { l.clone() }) else {
            return;
        };
        let (ctx, source, shared) = (ctx.clone(), source.clone(), shared.clone());
        tokio::spawn(async move { start(&ctx, l, rank, ghost, port, &source, shared).await });
    }
}

fn master_ip(ctx: &Ctx) -> Ipv4Addr {
    ctx.link.get().map_or(Ipv4Addr::LOCALHOST, |c| *c.master.ip())
}

/// Starts one rank here (its fds forwarded to `port` rather than the launch's, if not 0),
/// then reports how that went and tracks the process it started.
async fn start(
    ctx: &Arc<Ctx>,
    l: Launch,
    rank: u32,
    ghost: Option<i32>,
    port: u16,
    source: &procs::Source,
    shared: Option<SharedImage>,
) {
    let image = match &shared {
        Some(cell) => {
            // The restore takes the copy whole.
            let whole = async {
                let image = image_of(ctx, &l, source, cell).await?;
                image.whole().await.map(|()| image)
            };
            match whole.await {
                Ok(image) => Some(image.bytes.clone() as bproc_image::SharedImage),
                Err(e) => {
                    warn!("launch {} rank {rank}: {e}", l.launch);
                    let msg = Message::RankSpawned { launch: l.launch, rank, pid: -EIO };
                    return ctx.outbox.send(0, msg);
                }
            }
        }
        None => None,
    };
    let master = master_ip(ctx);
    let client_socket = ctx.opts.client_socket.as_ref().map(|p| p.to_string_lossy().into_owned());
    let outbox = ctx.outbox.clone();
    let cx = procs::Start {
        procs: &ctx.procs,
        authority: ctx.opts.authority,
        diskless: ctx.opts.diskless.as_ref(),
        source,
        master,
        client_socket: client_socket.as_deref(),
        launch: l.launch,
        rank,
        set_tid: ghost,
        creds: l.creds,
        forward_port: port,
    };
    let (ctx2, launch, uid) = (ctx.clone(), l.launch, cx.creds.uid);
    let program = l.spec.image.is_none().then(|| l.spec.path.clone());
    let done: procs::Done = Box::new(move |reply| {
        let pid = match reply {
            Ok(pid) => pid,
            Err(r) => {
                debug!("launch {launch} rank {rank}: {}", r.message);
                // Ahead of the RankSpawned with the code, on the same link.
                let mut reason = r.message;
                if reason.len() > 1024 {
                    let mut end = 1024;
                    while !reason.is_char_boundary(end) {
                        end -= 1;
                    }
                    reason.truncate(end);
                }
                ctx2.outbox.send(0, Message::RankRefused { launch, rank, reason });
                -r.code
            }
        };
        ctx2.outbox.send(0, Message::RankSpawned { launch, rank, pid });
        if pid > 0 {
            ctx2.procs.track(launch, rank, pid, ghost.unwrap_or(0), uid, program.as_deref());
        }
    });
    procs::spawn(&cx, l.spec, image, move |m| outbox.send(0, m), done).await;
}

/// Hands `part` to its first node; a node that cannot be reached has its ranks reported and
/// the part goes to the next one.
async fn forward(
    ctx: &Ctx,
    l: &Launch,
    frames: &TreeFrames,
    mut part: Vec<TreeEntry>,
    source: &procs::Source,
    shared: Option<SharedImage>,
) {
    while !part.is_empty() {
        let child = &part[0];
        match send(ctx, l, frames, &part).await {
            Ok(mut s) => {
                let files = ctx.opts.diskless.is_some() && !l.spec.files.is_empty();
                if files || shared.is_some() {
                    let done = serve_child(ctx, l, &mut s, source, shared.as_ref()).await;
                    if done && keepable(&l.spec) {
                        ctx.kept.put(tree_addr(child), s);
                    }
                } else if plain(&l.spec) {
                    ctx.kept.put(tree_addr(child), s);
                }
                return;
            }
            Err(e) => {
                debug!("launch {}: node {} unreachable for the tree: {e}", l.launch, child.node);
                for &rank in &child.ranks {
                    let msg = Message::RankSpawned { launch: l.launch, rank, pid: -BE_NODEDOWN };
                    ctx.outbox.send(0, msg);
                }
                part.remove(0);
            }
        }
    }
}

/// Answers a child's requests, until it is done: for a file (its hash), the size and content
/// from this node's cache, fetching into it what it lacks (diskless nodes); for
/// [`IMAGE_REQUEST`], the size and bytes of the launch's image. Whether the child said it was
/// done ([`procs::FETCHES_DONE`]), rather than closing or failing.
async fn serve_child(
    ctx: &Ctx,
    l: &Launch,
    s: &mut TcpStream,
    source: &procs::Source,
    shared: Option<&SharedImage>,
) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let mut hash = [0u8; 32];
        if s.read_exact(&mut hash).await.is_err() {
            return false;
        }
        if hash == procs::FETCHES_DONE {
            return true;
        }
        if hash == IMAGE_REQUEST {
            let Some(cell) = shared else { return false };
            let image = match image_of(ctx, l, source, cell).await {
                Ok(b) => b,
                Err(e) => {
                    warn!("launch {}: cannot serve the image to a child: {e}", l.launch);
                    return false;
                }
            };
            let Some(copy) = image_for_child(l, s, ctx, image.clone()).await else { return false };
            let len = match &copy {
                Some(made) => made.len(),
                None => image.bytes.capacity(),
            };
            if write_more(s, &(len as u64).to_be_bytes()).await.is_err() {
                return false;
            }
            let sent = match &copy {
                Some(made) => s.write_all(made).await,
                None => send_pages(s, &image).await,
            };
            if sent.is_err() {
                return false;
            }
            continue;
        }
        let Some(d) = &ctx.opts.diskless else { return false };
        let Some(f) = l.spec.files.iter().find(|f| f.hash == hash) else { return false };
        let cached =
            match procs::ensure_cached(d, source, master_ip(ctx), &l.spec, u32::MAX, f).await {
                Ok(p) => p,
                Err(e) => {
                    warn!("launch {}: cannot serve {} to a child: {e}", l.launch, f.path);
                    return false;
                }
            };
        let Ok(data) = tokio::fs::read(&cached).await else { return false };
        if s.write_all(&(data.len() as u64).to_be_bytes()).await.is_err()
            || s.write_all(&data).await.is_err()
        {
            return false;
        }
    }
}

/// Asks a child which of the files `image` names it has, and gives what to send it: the image
/// (`Some(None)`), or a copy carrying the files it lacks; `None` if the child went away or the
/// copy failed (logged).
async fn image_for_child(
    l: &Launch,
    s: &mut TcpStream,
    ctx: &Ctx,
    image: Arc<NodeImage>,
) -> Option<Option<Arc<Vec<u8>>>> {
    use bproc_proto::conn;
    use tokio::io::AsyncReadExt;
    // The child's answer follows its request, unasked, about the files the launch lists.
    let listed = l.spec.image_files.as_deref().unwrap_or_default();
    let mut count = [0u8; 4];
    s.read_exact(&mut count).await.ok()?;
    let mut said = vec![0u8; conn::answer_len(count, listed.len()).ok()?];
    s.read_exact(&mut said).await.ok()?;
    if said.iter().all(|a| *a == 1) {
        // It has them all (the usual case): no copy to look for or make.
        return Some(None);
    }
    // This node's copy names those of them it had (it holds the pages of the others), in
    // their order.
    let said: std::collections::HashMap<&str, (&conn::FileId, u8)> =
        listed.iter().zip(said).map(|(f, a)| (f.path.as_str(), (f, a))).collect();
    let has = |f: &conn::FileId| said.get(f.path.as_str()).is_some_and(|(g, a)| *g == f && *a == 1);
    // What it lacks is looked up in the image, and a copy made from it, once it is whole.
    image.whole().await.ok()?;
    let answer: Vec<u8> = image.files().iter().map(|f| u8::from(has(f))).collect();
    if answer.iter().all(|a| *a == 1) {
        // It lacks only files whose pages this node's copy carries already.
        return Some(None);
    }
    let root = files_root(ctx).map(|r| r.to_path_buf());
    let held = image.clone();
    let copy = tokio::task::spawn_blocking(move || {
        let whole = || Ok(held.bytes.clone() as bproc_image::SharedImage);
        held.copies.for_answer(held.files(), &answer, root.as_deref(), whole)
    })
    .await;
    match copy {
        Ok(Ok(made)) => Some(made),
        Ok(Err(e)) => {
            warn!("launch {}: cannot make the image for a child that lacks files: {e}", l.launch);
            None
        }
        Err(_) => None,
    }
}

/// Writes `b` on `s` with `MSG_MORE`: TCP holds it for what follows (an image's length, for
/// the image), so that both go out together, not as a segment of their own.
async fn write_more(s: &TcpStream, b: &[u8]) -> std::io::Result<()> {
    use nix::sys::socket::{send, MsgFlags};
    use std::os::fd::AsRawFd;
    let mut at = 0;
    while at < b.len() {
        s.writable().await?;
        let sent = s.try_io(tokio::io::Interest::WRITABLE, || {
            let more = MsgFlags::from_bits_retain(nix::libc::MSG_MORE);
            send(s.as_raw_fd(), &b[at..], more).map_err(std::io::Error::from)
        });
        match sent {
            Ok(n) => at += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends this node's copy of an image to a child without copying its bytes, each piece as it
/// arrives: its pages go into a pipe (`vmsplice`) and from there to the socket (`splice`),
/// which holds them until sent. Sound because nothing writes a byte of the copy once it is
/// filled, and its pages outlive its mapping for as long as the kernel holds them. A fetch
/// that fails part way fails the send (the caller closes the connection, so the child reads
/// less than it was told).
async fn send_pages(s: &TcpStream, image: &NodeImage) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, splice, vmsplice, FcntlArg, OFlag, SpliceFFlags};
    use std::os::fd::AsRawFd;
    let (rd, wr) = match SPARE_PIPES.with_borrow_mut(Vec::pop) {
        Some(pipe) => pipe,
        None => {
            let (rd, wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
            // A larger pipe moves more pages per call; the default one still works.
            let _ = fcntl(wr.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(1 << 20));
            (rd, wr)
        }
    };
    let mut fill = image.fill.clone();
    let mut sent = 0;
    while sent < image.bytes.capacity() {
        let more = fill.wait_for(|f| !matches!(f, Fill::Filling(n) if *n <= sent)).await;
        match more.map(|f| f.clone()) {
            Ok(Fill::Failed(e)) => return Err(std::io::Error::other(e.to_string())),
            Ok(_) => {}
            Err(_) => return Err(std::io::Error::other(ImageError::Stopped.to_string())),
        }
        let bytes = image.bytes.filled();
        while sent < bytes.len() {
            let slice = [std::io::IoSlice::new(&bytes[sent..])];
            // The pipe is empty here, so this does not wait.
            let mut held = vmsplice(&wr, &slice, SpliceFFlags::SPLICE_F_NONBLOCK)?;
            if held == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            sent += held;
            while held > 0 {
                s.writable().await?;
                let moved = s.try_io(tokio::io::Interest::WRITABLE, || {
                    splice(&rd, None, s, None, held, SpliceFFlags::SPLICE_F_NONBLOCK)
                        .map_err(std::io::Error::from)
                });
                match moved {
                    Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                    Ok(n) => held -= n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    // Empty again: the next send takes it (a failed one drops its pipe, and what it held).
    SPARE_PIPES.with_borrow_mut(|p| (p.len() < SPARE_PIPES_MAX).then(|| p.push((rd, wr))));
    Ok(())
}

thread_local! {
    /// Pipes of finished [`send_pages`] calls, empty, for the next ones on this thread (the
    /// runtime's): making, sizing and closing one per child cost a node forwarding a small
    /// image a tenth of its work.
    static SPARE_PIPES: std::cell::RefCell<Vec<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// The most spare pipes kept: as many as children a node serves at once, usually.
const SPARE_PIPES_MAX: usize = 16;

/// Why a child node could not be handed its part (its ranks are reported as on a down node).
#[derive(Debug, Error)]
enum SendError {
    /// Its tree port did not answer within 5 s.
    #[error("connect to {0} timed out (is the node up, and its tree port reachable?)")]
    Timeout(SocketAddrV4),
    /// Its tree port refused (its slave is not running, or has no tree port).
    #[error("connect to {addr}: {error} (is the node's slave running?)")]
    Connect {
        /// The child's tree port.
        addr: SocketAddrV4,
        /// What the connection said.
        error: std::io::Error,
    },
    /// The part could not be written.
    #[error("{addr}: {error}")]
    Write {
        /// The child's tree port.
        addr: SocketAddrV4,
        /// What the connection said.
        error: std::io::Error,
    },
}

/// Where a node takes its tree parts.
fn tree_addr(e: &TreeEntry) -> SocketAddrV4 {
    SocketAddrV4::new(e.ip, e.port)
}

/// The frames of `l`'s parts for this node's children, made with its own spec and creds (lent
/// to the message, not copied).
fn frames_of(l: &mut Launch) -> TreeFrames {
    let msg = Message::SpawnTree {
        launch: l.launch,
        nonce: l.nonce,
        time_ms: l.time_ms,
        size: l.size,
        creds: std::mem::take(&mut l.creds),
        spec: std::mem::take(&mut l.spec),
        width: l.width,
        entries: Vec::new(),
    };
    let frames = TreeFrames::new(0, &msg).expect("a SpawnTree without entries");
    if let Message::SpawnTree { creds, spec, .. } = msg {
        (l.creds, l.spec) = (creds, spec);
    }
    frames
}

/// Sends a plain launch's `part` on a kept connection to its child without waiting, as most
/// parts go; whether it went (else [`forward`] sends it). A part that fills the socket is
/// finished by a task, which sends it again on another connection if this one fails.
fn send_now(
    ctx: &Arc<Ctx>,
    l: &Launch,
    frames: &Arc<TreeFrames>,
    part: &[TreeEntry],
    source: &procs::Source,
) -> bool {
    let addr = tree_addr(&part[0]);
    let Some(s) = ctx.kept.take(addr) else { return false };
    let sealed = seal(&ctx.opts.key, frames.frame(part, 32));
    match s.try_write(&sealed) {
        Ok(n) if n == sealed.len() => ctx.kept.put(addr, s),
        Ok(n) => {
            let (ctx, l, frames) = (ctx.clone(), l.clone(), frames.clone());
            let (part, source) = (part.to_vec(), source.clone());
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut s = s;
                match s.write_all(&sealed[n..]).await {
                    Ok(()) => ctx.kept.put(addr, s),
                    Err(e) => {
                        debug!("launch {}: kept connection to {addr} failed: {e}", l.launch);
                        forward(&ctx, &l, &frames, part, &source, None).await;
                    }
                }
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            ctx.kept.put(addr, s);
            return false;
        }
        Err(e) => {
            debug!("kept connection to {addr} failed: {e}");
            return false;
        }
    }
    true
}

/// Hands `part` to its first node, over a connection kept from an earlier launch when there
/// is one, else a new one; returns the connection.
async fn send(
    ctx: &Ctx,
    l: &Launch,
    frames: &TreeFrames,
    part: &[TreeEntry],
) -> Result<TcpStream, SendError> {
    use tokio::io::AsyncWriteExt;
    let addr = tree_addr(&part[0]);
    let sealed = seal(&ctx.opts.key, frames.frame(part, 32));
    if keepable(&l.spec) {
        while let Some(mut s) = ctx.kept.take(addr) {
            match s.write_all(&sealed).await {
                Ok(()) => return Ok(s),
                Err(e) => debug!("launch {}: kept connection to {addr} failed: {e}", l.launch),
            }
        }
    }
    let mut s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| SendError::Timeout(addr))?
        .map_err(|error| SendError::Connect { addr, error })?;
    let _ = s.set_nodelay(true);
    s.write_all(&sealed).await.map_err(|error| SendError::Write { addr, error })?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child that waited its time tells the parent, still takes a part sent meanwhile,
    /// and then lets the connection go once its grace is over.
    #[tokio::test(start_paused = true)]
    async fn a_child_retires_a_kept_connection_without_losing_a_part() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (parent, child) = tokio::join!(TcpStream::connect(l.local_addr().unwrap()), l.accept());
        let (mut parent, child) = (parent.unwrap(), child.unwrap().0);
        let mut child = tokio::io::BufReader::new(child);
        let mut retiring = None;
        let waited = tokio::spawn(async move {
            let next = next_part(&mut child, &mut retiring).await.unwrap();
            (next, child, retiring)
        });
        // The child's word comes after its wait; a part written then still reaches it.
        let mut word = [0u8; 1];
        parent.read_exact(&mut word).await.unwrap();
        parent.write_all(b"a part").await.unwrap();
        let (next, mut child, mut retiring) = waited.await.unwrap();
        assert!(next && retiring.is_some());
        let mut got = [0u8; 6];
        child.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"a part");
        // Nothing more: the grace ends and so does the wait.
        assert!(!next_part(&mut child, &mut retiring).await.unwrap());
    }

    #[test]
    fn a_launch_is_taken_once() {
        assert!(first_time(0xfeed));
        assert!(!first_time(0xfeed));
        assert!(first_time(0xfeee));
    }
}
