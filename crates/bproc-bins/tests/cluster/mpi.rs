//! A real MPI hello world (MPICH's hydra and Open MPI's mpirun) started through brsh across
//! four virtual nodes, inside a network namespace of its own with only loopback, so that no
//! MPI traffic can use any other address.

use std::path::{Path, PathBuf};
use std::process::Command;

use bproc_testkit::{require_root, unique_dir, TestCommand};

use crate::bins;

/// Each rank reports its node, and an allreduce proves that every rank reached every other.
const HELLO: &str = r#"#include <mpi.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int rank, size, total = 0;
    char host[64];
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    gethostname(host, sizeof host);
    MPI_Allreduce(&rank, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    printf("rank %d of %d on %s sum %d\n", rank, size, host, total);
    MPI_Finalize();
    return total == size * (size - 1) / 2 ? 0 : 1;
}
"#;

/// Deletes the namespace and stops the cluster however the test ends.
struct Cleanup {
    netns: String,
    cluster: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = bproc_vcluster::stop_detached(&self.cluster);
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).status();
    }
}

fn have(prog: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {prog}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn mpi_hello_world_over_brsh() {
    if !require_root("creates a network namespace so that MPI traffic stays on loopback") {
        return;
    }
    // The program must be where nodes can see it: not under /tmp, which is private per node
    // (and may hold this checkout).
    let work = Path::new("/var/tmp").join(format!("bproc-mpi-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("hello.c"), HELLO).unwrap();
    let b = bins();
    // Open MPI hands the agent's path to its daemons on the nodes: it must exist there too.
    std::fs::copy(b.join("brsh"), work.join("brsh")).unwrap();
    let brsh = work.join("brsh").display().to_string();
    let cases = [
        (
            "mpicc.mpich",
            format!("timeout 60 mpiexec.hydra -launcher rsh -launcher-exec {brsh} -hosts n0,n1,n2,n3 -n 4 ./hello-mpicc.mpich"),
        ),
        (
            "mpicc.openmpi",
            format!(
                "timeout 60 mpirun.openmpi --allow-run-as-root --mca plm_rsh_agent {brsh} \
                 --mca plm_rsh_no_tree_spawn 1 --mca btl self,tcp --mca oob_tcp_if_include lo \
                 --mca btl_tcp_if_include lo -H n0,n1,n2,n3 -np 4 ./hello-mpicc.openmpi"
            ),
        ),
    ];
    for (cc, launch) in cases {
        if !have(cc) {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: {cc} is not installed (.ci/run installs mpich and openmpi)"
            );
            continue;
        }
        let st = TestCommand::from(
            Command::new(cc)
                .arg("-O2")
                .arg("-o")
                .arg(work.join(format!("hello-{cc}")))
                .arg(work.join("hello.c")),
        )
        .output_of()
        .status;
        assert!(st.success(), "{cc} failed");
        let cluster = unique_dir("mpi");
        std::fs::remove_dir_all(&cluster).unwrap();
        let netns = format!("bproc-mpi-{}-{cc}", std::process::id());
        let _cleanup = Cleanup { netns: netns.clone(), cluster: cluster.clone() };
        assert!(TestCommand::from(Command::new("ip").args(["netns", "add", &netns]))
            .output_of()
            .status
            .success());
        // Forks keep the kernel's pids here (BPROC_NO_FORK_PIDS). UCX (MPICH's transport)
        // takes virtual nodes, which share one kernel (one boot id, one IPC namespace), for
        // one host: it joins the ranks through SysV shared memory and checks each peer by
        // its pid in /proc, where another node's processes are not. With kernel pids every
        // node's rank has the same small pid, and each finds itself there; with its ghost's
        // pid no rank finds its peers and MPI_Init fails ("Endpoint timeout"). Real nodes,
        // each its own host, are not concerned; UCX over TCP alone hangs in MPI_Finalize.
        let script = format!(
            "set -e\nip link set lo up\nBPROC_NO_FORK_PIDS=1 {bpcluster} up -n 4 --dir {dir} > {dir}.env\n. {dir}.env\ncd {work}\n{launch}\n",
            bpcluster = b.join("bpcluster").display(),
            dir = cluster.display(),
            work = work.display(),
        );
        let out = TestCommand::from(
            Command::new("ip").args(["netns", "exec", &netns, "sh", "-c", &script]),
        )
        .output_of();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{cc}: {launch}\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut lines: Vec<&str> = stdout.lines().collect();
        lines.sort();
        let want: Vec<String> = (0..4).map(|r| format!("rank {r} of 4 on n{r} sum 6")).collect();
        assert_eq!(lines, want, "{cc}");
        let _ = std::fs::remove_file(format!("{}.env", cluster.display()));
    }
    let _ = std::fs::remove_dir_all(&work);
}
