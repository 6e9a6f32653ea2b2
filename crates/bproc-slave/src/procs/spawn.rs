//! Starting one rank: check who it runs for, stage its program on a diskless node, prepare
//! its root, environment and fds, then start its program or restore its process image.

use std::ffi::CString;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use bproc_proto::errno::{EINVAL, EPERM};
use bproc_proto::{Creds, IoSpec, Message, ProcSpec};
use bproc_sys::{Identity, Jail};
use tracing::{info, warn};

use super::io::{open_image, open_io, parent_image, Fds, Opened};
use super::spawner::{Image, RestoreFailed};
use super::stage::{stage, Source};
use super::{refuse, Authority, Procs, Refusal};
use crate::isolate::Diskless;

/// Where and for whom a rank starts: what [`spawn`] needs besides the rank's spec.
pub struct Start<'a> {
    /// The slave's processes, which the rank joins.
    pub procs: &'a Procs,
    /// Whom the slave may run processes as.
    pub authority: Authority,
    /// The node's own filesystem, when it is diskless.
    pub diskless: Option<&'a Diskless>,
    /// Where staged files the cache lacks come from.
    pub source: &'a Source,
    /// The master's address as this node sees it.
    pub master: Ipv4Addr,
    /// The node's client socket as its processes see it.
    pub client_socket: Option<&'a str>,
    /// The launch.
    pub launch: u64,
    /// The rank in it.
    pub rank: u32,
    /// The pid to start it as (its ghost's), when given.
    pub set_tid: Option<i32>,
    /// Whom it runs for.
    pub creds: Creds,
    /// Where its forwarded fds connect (0: the spec's port).
    pub forward_port: u16,
}

/// What a rank's start comes to: its pid here, or why it did not start. Called once, on the
/// spawner thread once it started the program or restored the image, or failed to (the
/// caller reports the start, then [`Procs::track`]s it, there, without a turn of the
/// daemon's runtime), else (a refusal before) where [`spawn`] runs.
pub type Done = Box<dyn FnOnce(Result<i32, Refusal>) + Send>;

/// Starts the rank `cx` names, from `spec`, as `set_tid` when this node gives processes
/// their ghosts' pids, and tells `done` how that went. An image launch restores `shared`
/// when given (the node's copy of a vector fork's image), else the image as it comes for
/// this rank, from the mover or the parent node (`cx.source`). `report` sends the node's
/// report when staging changed its cache.
pub async fn spawn(
    cx: &Start<'_>,
    spec: ProcSpec,
    shared: Option<bproc_image::SharedImage>,
    report: impl Fn(Message) + Send + 'static,
    done: Done,
) {
    match prepare(cx, spec, shared, report).await {
        Ok(Prepared::Image { spec, image, fds, identity, root }) => {
            restore_image(cx, &spec, image, fds, identity, root, done)
        }
        Ok(Prepared::Program { spec, envp, jail, fds, identity }) => {
            match program_spec(cx, &spec, envp, jail, fds, identity) {
                Ok(req) => start_program(cx, &spec, req, done),
                Err(r) => done(Err(r)),
            }
        }
        Err(r) => done(Err(r)),
    }
}

/// A rank ready to start: its fds open, its program staged or its image on its way.
enum Prepared {
    Image {
        spec: ProcSpec,
        image: Image,
        fds: Fds,
        identity: Option<Identity>,
        root: Option<PathBuf>,
    },
    Program {
        spec: ProcSpec,
        envp: bproc_sys::CStrings,
        jail: Option<Jail>,
        fds: Fds,
        identity: Option<Identity>,
    },
}

/// Checks and prepares the rank [`spawn`] starts.
async fn prepare(
    cx: &Start<'_>,
    spec: ProcSpec,
    shared: Option<bproc_image::SharedImage>,
    report: impl Fn(Message) + Send + 'static,
) -> Result<Prepared, Refusal> {
    check_may_run(cx, &spec)?;
    // A root given with `bpctl -r` confines the node's processes, below which a diskless
    // node's root is found (the daemon's own paths resolve there since its chroot).
    let node_root = crate::node_root();
    let jail = jail_of(cx, &spec, node_root.as_deref(), &report).await?;
    let envp = environment(cx, &spec)?;
    // An image's connection opens before the forwarded fds', so a mover that serves both
    // on one listener takes it first.
    let image = match (spec.image, shared) {
        (Some(_), Some(bytes)) => Some(Image::Bytes(bytes)),
        (Some(from), None) => {
            let root = cx.diskless.map(|d| d.root.as_path());
            Some(match cx.source {
                Source::Launcher => {
                    Image::Stream(open_image(cx.master, &spec, from, cx.rank, root).await?)
                }
                Source::Parent(conn) => {
                    let files = spec.image_files.as_deref().unwrap_or_default();
                    let image = parent_image(conn, files, root).await?;
                    info!(
                        "launch {} rank {}: restoring the process image as it comes ({} bytes) \
                         from the parent node",
                        cx.launch,
                        cx.rank,
                        image.left()
                    );
                    Image::Parent(image)
                }
            })
        }
        (None, _) => None,
    };
    // The rank's own port for its forwarded fds (its relaying ghost's), once staging, which
    // fetches from the launcher's, is done.
    let spec = match cx.forward_port {
        0 => spec,
        port => ProcSpec { io_port: port, ..spec },
    };
    let fds = open_fds(cx, &spec).await?;
    let identity = cx.authority.root.then(|| Identity {
        uid: cx.creds.uid,
        gid: cx.creds.gid,
        groups: cx.creds.groups.clone(),
    });
    Ok(match image {
        Some(image) => {
            let root = cx.diskless.map(|d| jail_root(node_root.as_deref(), &d.root)).or(node_root);
            Prepared::Image { spec, image, fds, identity, root }
        }
        None => Prepared::Program { spec, envp, jail, fds, identity },
    })
}

/// Refuses a rank this slave may not run: another user's on a slave without root, or one
/// with no command.
fn check_may_run(cx: &Start<'_>, spec: &ProcSpec) -> Result<(), Refusal> {
    if !cx.authority.root && cx.creds.uid != cx.authority.uid {
        refuse(
            EPERM,
            format!(
                "this node's slave runs as uid {} without root, so it runs only that user's jobs",
                cx.authority.uid
            ),
        )?;
    }
    if spec.argv.is_empty() {
        refuse(EINVAL, "empty command".into())?;
    }
    Ok(())
}

/// `s` as a C string, refused when it holds a NUL.
fn cstr(s: &str) -> Result<CString, Refusal> {
    CString::new(s).map_err(|_| Refusal { code: EINVAL, message: format!("NUL in {s:?}") })
}

/// `inner` below the node's root (`bpctl -r`), when it has one.
fn jail_root(node_root: Option<&Path>, inner: &Path) -> PathBuf {
    match node_root {
        Some(r) => r.join(inner.strip_prefix("/").unwrap_or(inner)),
        None => inner.to_owned(),
    }
}

/// Where the rank is confined: the node's root, or a diskless node's (its program staged
/// there first); `None` when it runs in the slave's own.
async fn jail_of(
    cx: &Start<'_>,
    spec: &ProcSpec,
    node_root: Option<&Path>,
    report: &impl Fn(Message),
) -> Result<Option<Jail>, Refusal> {
    let jail_cstr = |p: &Path| {
        CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|_| Refusal { code: EINVAL, message: "NUL in a path".into() })
    };
    let Some(d) = cx.diskless else {
        let Some(r) = node_root else { return Ok(None) };
        // The working directory is looked up from the daemon, which has this root already.
        let cwd = if Path::new(&spec.cwd).is_dir() { spec.cwd.as_str() } else { "/" };
        return Ok(Some(Jail { root: jail_cstr(r)?, cwd: cstr(cwd)? }));
    };
    let before = crate::info::STAGED_BYTES.load(std::sync::atomic::Ordering::Relaxed);
    if let Err(e) = stage(d, cx.source, cx.master, spec, cx.rank).await {
        warn!("launch {} rank {}: {e}", cx.launch, cx.rank);
        refuse(bproc_proto::errno::EIO, e.to_string())?;
    }
    if crate::info::STAGED_BYTES.load(std::sync::atomic::Ordering::Relaxed) != before {
        // The master learns the new cache total now, ahead of the spawn reply, rather
        // than at the next ping (a pong is the slave's machine report).
        report(Message::Pong { seq: 0, info: crate::node_info() });
    }
    let inside = d.root.join(spec.cwd.trim_start_matches('/'));
    let cwd = if inside.is_dir() { spec.cwd.as_str() } else { "/" };
    Ok(Some(Jail { root: jail_cstr(&jail_root(node_root, &d.root))?, cwd: cstr(cwd)? }))
}

/// The rank's environment: the spec's, with the node's client socket as `BPROC_SOCKET`.
fn environment(cx: &Start<'_>, spec: &ProcSpec) -> Result<bproc_sys::CStrings, Refusal> {
    let rank = format!("{:07}", cx.rank);
    bproc_sys::CStrings::joined(spec.env_where(&rank, cx.client_socket))
        .map_err(|e| Refusal { code: EINVAL, message: e.to_string() })
}

/// Opens the rank's fds 0 to 2 and those of its I/O list (an optional one that cannot be
/// opened is left closed).
async fn open_fds(cx: &Start<'_>, spec: &ProcSpec) -> Result<Fds, Refusal> {
    let mut fds = Fds::default();
    let ghost = cx.set_tid.unwrap_or(0);
    let stdio = |fd: i32| {
        let io = spec.io.get(fd as usize).unwrap_or(&IoSpec::Null);
        open_io(io, fd, cx.master, spec, cx.rank, ghost)
    };
    // At once: each forwarded one is a connection to the launcher, a round trip.
    let (i, o, e) = tokio::join!(stdio(0), stdio(1), stdio(2));
    for (fd, opened) in [i, o, e].into_iter().enumerate() {
        fds.set(fd as i32, opened?);
    }
    for f in &spec.fds {
        match open_io(&f.io, f.fd, cx.master, spec, cx.rank, ghost).await {
            Ok(o) => fds.set(f.fd, o),
            Err(e) if f.optional => {
                let (launch, rank) = (cx.launch, cx.rank);
                warn!("launch {launch} rank {rank}: fd {} left closed: {}", f.fd, e.message);
                fds.set(f.fd, Opened::Closed);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(fds)
}

/// Restores the rank's process image, confined to `root`, on the spawner thread, which
/// tells `done` (as [`start_program`] does).
fn restore_image(
    cx: &Start<'_>,
    spec: &ProcSpec,
    image: Image,
    fds: Fds,
    identity: Option<Identity>,
    root: Option<PathBuf>,
    done: Done,
) {
    let (launch, rank) = (cx.launch, cx.rank);
    let Fds { stdio, extra, files } = fds;
    let restore = bproc_ckpt::restore::RestoreSpec {
        stdio,
        fds: extra,
        files,
        set_tid: cx.set_tid.filter(|p| *p > 0 && cx.procs.same_pids()),
        identity,
        value: i64::from(rank) + 1,
        // Where the process finds the cluster now.
        note: cx.client_socket.map(|p| p.as_bytes().to_vec()),
        root,
        // The master filled these in from the launcher's kernel.
        limits: spec.rlimits.clone(),
    };
    cx.procs.restore(image, restore, move |restored| match restored {
        Ok(pid) => {
            info!("launch {launch} rank {rank}: restored a process image as pid {pid}");
            done(Ok(pid))
        }
        Err(e) => {
            let code = e
                .get_ref()
                .and_then(|r| r.downcast_ref::<RestoreFailed>())
                .map_or(bproc_proto::errno::EIO, |r| r.errno);
            warn!("launch {launch} rank {rank}: restoring the process image failed: {e}");
            done(refuse(code, format!("restoring the image: {e}")))
        }
    });
}

/// Starts the rank's program (`req`, from [`program_spec`]), under another pid when its
/// ghost's is taken here, and tells `done` on the spawner thread.
fn start_program(cx: &Start<'_>, spec: &ProcSpec, req: bproc_sys::SpawnSpec, done: Done) {
    let (launch, rank) = (cx.launch, cx.rank);
    // What a failure names: the file -I/-O/-E (or an I/O list) opened, else the program.
    let file_paths: Vec<String> =
        req.files.iter().map(|f| f.path.to_string_lossy().into_owned()).collect();
    let jail_path = req.jail.as_ref().map(|j| j.root.to_string_lossy().into_owned());
    let (path, creds) = (spec.path.clone(), cx.creds.clone());
    cx.procs.spawn(req, (launch, rank), move |started| {
        let pid = match started {
            Ok(pid) => pid,
            Err(e) => {
                let code = bproc_sys::spawn_errno(&e).unwrap_or(bproc_proto::errno::EIO);
                let text = nix::errno::Errno::from_raw(code).desc();
                let step = e
                    .get_ref()
                    .and_then(|r| r.downcast_ref::<bproc_sys::SpawnFailed>())
                    .map(|f| f.step);
                let message = match step {
                    Some(bproc_sys::SpawnStep::File(i)) if i < file_paths.len() => {
                        format!("{}: {text}", file_paths[i])
                    }
                    Some(bproc_sys::SpawnStep::Root) => {
                        format!("{}: {text} (the node's root)", jail_path.unwrap_or_default())
                    }
                    Some(bproc_sys::SpawnStep::Identity) => {
                        format!("cannot run as uid {} gid {}: {text}", creds.uid, creds.gid)
                    }
                    _ => format!("{path}: {text}"),
                };
                return done(refuse(code, message));
            }
        };
        info!("launch {launch} rank {rank}: started {path} as pid {pid} (uid {})", creds.uid);
        done(Ok(pid))
    });
}

/// What the spawner thread starts for the rank's program.
fn program_spec(
    cx: &Start<'_>,
    spec: &ProcSpec,
    envp: bproc_sys::CStrings,
    jail: Option<Jail>,
    fds: Fds,
    identity: Option<Identity>,
) -> Result<bproc_sys::SpawnSpec, Refusal> {
    let Fds { stdio, extra, files } = fds;
    Ok(bproc_sys::SpawnSpec {
        path: cstr(&spec.path)?,
        argv: spec.argv.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?,
        envp,
        // A working directory the node lacks is `/`: the child falls back to it.
        cwd: Some(cstr(&spec.cwd)?),
        stdio,
        fds: extra,
        limits: spec.rlimits.clone(),
        jail,
        identity,
        umask: spec.umask,
        files,
        set_tid: cx.set_tid.filter(|p| *p > 0 && cx.procs.same_pids()),
        trace: false,
        exec_fd: None,
        // The daemon's own ignored signals (SIGINT and SIGQUIT when a script started it in
        // the background) are no business of a launch's processes.
        default_signals: true,
    })
}
