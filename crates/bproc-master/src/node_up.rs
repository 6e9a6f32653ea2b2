//! The `node_up` program: run when a node starts a fresh session.
//!
//! bpmaster runs `node_up <node>` from the configuration file's directory, with stdin on
//! `/dev/null`, stdout and stderr on `LOGDIR/node.<N>`, its own process group, no inherited
//! descriptors, and `BPROC_SOCKET`/`BPROC_NODE` in its environment so it can call `bpctl`.
//!
//! Deliberate differences from BProc, which left the outcome to the script: when the program
//! exits 0 and the node is still `boot`, bpmaster opens it (mode 0111) and sets it `up`; when it
//! fails and the node is still `boot`, the node goes to `error`. Without a `node_up` program
//! the node goes straight to `up` with mode 0111. A program still running after
//! `nodeuptimeout` seconds (default 300) is killed with its process group, and the node goes to
//! `error`, the master's log saying why (BProc's node stayed in `boot` forever).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::process::Command;
use tracing::{info, warn};

use crate::table::UP_MODE;
use crate::Shared;

/// Why a node's `node_up` did not succeed; the master logs it under the node's number. The
/// causes are printed in the message (the log shows one line), so none is a source.
#[derive(Debug, thiserror::Error)]
enum NodeUpError {
    #[error("staging libraries: {0}")]
    Stage(String),
    #[error("staging libraries: unexpected {0}")]
    StageAnswer(&'static str),
    #[error("cannot create node_up log directory {}: {error}", dir.display())]
    LogDir { dir: PathBuf, error: std::io::Error },
    #[error("cannot create {}: {error}", log.display())]
    Log { log: PathBuf, error: std::io::Error },
    #[error("cannot run {}: {error}", prog.display())]
    Spawn { prog: PathBuf, error: std::io::Error },
    #[error(
        "{} {node} did not finish within {limit} s (nodeuptimeout); killed it and its \
         processes; see {}",
        prog.display(),
        log.display()
    )]
    Timeout { prog: PathBuf, node: i32, limit: u32, log: PathBuf },
    #[error("waiting for {}: {error}", prog.display())]
    Wait { prog: PathBuf, error: std::io::Error },
}

pub(crate) async fn node_up(shared: Arc<Shared>, n: i32, cookie: u64) {
    let started = std::time::Instant::now();
    let ok = match run(&shared, n).await {
        Ok(ok) => ok,
        Err(e) => {
            warn!("node {n}: {e}");
            false
        }
    };
    let changed = {
        let mut t = shared.table();
        match t.get_mut(n) {
            Some(node)
                if node.state == "boot"
                    && node.session.as_ref().is_some_and(|s| s.cookie == cookie) =>
            {
                if ok {
                    shared.metrics.node_booted(started.elapsed());
                    node.mode = UP_MODE;
                    node.state = "up".into();
                } else {
                    node.state = "error".into();
                }
                true
            }
            _ => false,
        }
    };
    if changed {
        info!("node {n}: {}", if ok { "up" } else { "error (node_up failed)" });
        shared.notify();
    }
}

/// Stages the configuration's libraries on a diskless node, as BProc's node_up did
/// with its `vmadlib` plugin.
async fn stage_libraries(shared: &Shared, n: i32) -> Result<(), NodeUpError> {
    let Some(stage) = &shared.stage else { return Ok(()) };
    let diskless =
        shared.table().get(n).and_then(|node| node.info.as_ref()).is_some_and(|i| i.diskless);
    if !diskless {
        return Ok(());
    }
    let msg = bproc_proto::Message::StageFiles {
        port: stage.port,
        token: stage.token,
        files: stage.files.clone(),
    };
    match shared.request(n, msg).await {
        bproc_proto::Message::Ok => Ok(()),
        bproc_proto::Message::Error { message, .. } => Err(NodeUpError::Stage(message)),
        other => Err(NodeUpError::StageAnswer(other.name())),
    }
}

/// Stages libraries, then runs the program if there is one; `Ok(true)` when all succeeded.
async fn run(shared: &Shared, n: i32) -> Result<bool, NodeUpError> {
    stage_libraries(shared, n).await?;
    let prog = &shared.paths.node_up;
    if !prog.exists() {
        return Ok(true);
    }
    let logdir = &shared.paths.logdir;
    std::fs::create_dir_all(logdir)
        .map_err(|error| NodeUpError::LogDir { dir: logdir.clone(), error })?;
    let logpath = logdir.join(format!("node.{n}"));
    let log_error = |error| NodeUpError::Log { log: logpath.clone(), error };
    let log = std::fs::File::create(&logpath).map_err(log_error)?;
    let log2 = log.try_clone().map_err(log_error)?;
    let mut child = Command::new(prog)
        .arg(n.to_string())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        // A master that stops takes its unfinished node_up programs with it.
        .kill_on_drop(true)
        .env("BPROC_SOCKET", &shared.paths.socket)
        .env("BPROC_NODE", n.to_string())
        .spawn()
        .map_err(|error| NodeUpError::Spawn { prog: prog.clone(), error })?;
    let limit = shared.config().node_up_timeout;
    let status = if limit == 0 {
        child.wait().await
    } else {
        match tokio::time::timeout(Duration::from_secs(limit.into()), child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                // The whole group: what the program started goes with it.
                if let Some(pid) = child.id() {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                let _ = child.kill().await;
                return Err(NodeUpError::Timeout {
                    prog: prog.clone(),
                    node: n,
                    limit,
                    log: logpath,
                });
            }
        }
    }
    .map_err(|error| NodeUpError::Wait { prog: prog.clone(), error })?;
    if !status.success() {
        warn!("node {n}: {} {n} failed ({status}); see {}", prog.display(), logpath.display());
    }
    Ok(status.success())
}
