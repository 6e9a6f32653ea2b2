//! bpstat's process views: `-p` lists every remote process and its node, `-P`
//! annotates `ps` output read on stdin with a NODE column, and `--stat` shows each remote
//! process's state, CPU time and resident memory as measured on its node.
//!
//! `-P` difference from BProc: BProc read the pid at a fixed character column (two left of
//! the header's `PID`), which cut pids wider than the column; here the pid is the
//! whitespace-separated field in the header's `PID` position (the fields before it, such as
//! `USER`, hold no spaces in `ps` output).

use std::collections::HashMap;

use bproc_client::{ProcEntry, ProcStat};

/// `-p`: a header, then `PID\tNode` for every remote process, in pid order.
pub fn pid_list(procs: &[ProcEntry]) -> String {
    let mut out = String::from("PID\tNode\n");
    for p in procs {
        out.push_str(&format!("{}\t{}\n", p.pid, p.node));
    }
    out
}

/// `-P` was given input without a `PID` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no PID column in the input (pipe ps output into bpstat -P)")]
pub struct NoPidColumn;

/// `-P`: `input` (ps output) with a leading NODE column: the node of each remote process,
/// empty for local ones. Err when the input has no PID column.
pub fn annotate(input: &str, procs: &[ProcEntry]) -> Result<String, NoPidColumn> {
    let node: HashMap<i32, i32> = procs.iter().map(|p| (p.pid, p.node)).collect();
    let mut lines = input.lines();
    let Some(header) = lines.next() else { return Ok(String::new()) };
    let Some(field) = header.split_whitespace().position(|f| f == "PID") else {
        return Err(NoPidColumn);
    };
    let mut out = format!("NODE\t{header}\n");
    for line in lines {
        match line.split_whitespace().nth(field).and_then(|f| f.parse::<i32>().ok()) {
            Some(pid) => match node.get(&pid) {
                Some(n) => out.push_str(&format!("{n}\t{line}\n")),
                None => out.push_str(&format!("\t{line}\n")),
            },
            None => out.push_str(&format!("punting on: {line}\n")),
        }
    }
    Ok(out)
}

/// `--stat`: one row per remote process: pid, node, state, CPU seconds, resident KiB and the
/// command name (`comm`, looked up by `name`).
pub fn stat_table(procs: &[ProcEntry], stats: &[ProcStat], name: impl Fn(i32) -> String) -> String {
    let by_pid: HashMap<i32, &ProcStat> = stats.iter().map(|s| (s.rpid, s)).collect();
    let mut out = format!(
        "{:>7} {:>5} {} {:>9} {:>9} {}\n",
        "PID", "NODE", "S", "CPU(s)", "RSS(KiB)", "COMMAND"
    );
    for p in procs {
        let (state, cpu, rss) = match by_pid.get(&p.pid) {
            Some(s) => (
                char::from(s.state),
                format!("{:.2}", s.cpu_ms as f64 / 1000.0),
                s.rss_kib.to_string(),
            ),
            None => ('?', "-".into(), "-".into()),
        };
        out.push_str(&format!(
            "{:>7} {:>5} {} {:>9} {:>9} {}\n",
            p.pid,
            p.node,
            state,
            cpu,
            rss,
            name(p.pid)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn procs() -> Vec<ProcEntry> {
        vec![
            ProcEntry { pid: 120, node: 3, rpid: 9, uid: 0 },
            ProcEntry { pid: 1234567, node: 12, rpid: 10, uid: 0 },
        ]
    }

    #[test]
    fn pid_list_format() {
        assert_eq!(pid_list(&procs()), "PID\tNode\n120\t3\n1234567\t12\n");
    }

    #[test]
    fn annotate_ps_xf() {
        let ps = "    PID TTY      STAT   TIME COMMAND\n  100 pts/0    S      0:00 bash\n    120 pts/0    S      0:00  \\_ [hello-world]\n1234567 pts/0    S      0:00  \\_ [wide]\n";
        assert_eq!(
            annotate(ps, &procs()).unwrap(),
            "NODE\t    PID TTY      STAT   TIME COMMAND\n\t  100 pts/0    S      0:00 bash\n3\t    120 pts/0    S      0:00  \\_ [hello-world]\n12\t1234567 pts/0    S      0:00  \\_ [wide]\n"
        );
        let aux = "USER PID %CPU\nroot 120 0.0\nroot x 1\n";
        assert_eq!(
            annotate(aux, &procs()).unwrap(),
            "NODE\tUSER PID %CPU\n3\troot 120 0.0\npunting on: root x 1\n"
        );
        assert!(annotate("USER TTY\n", &procs()).is_err());
    }

    #[test]
    fn stat_rows() {
        let stats = [ProcStat { rpid: 120, state: b'S', cpu_ms: 1500, rss_kib: 2048 }];
        let t =
            stat_table(&procs(), &stats, |p| if p == 120 { "sleep".into() } else { "x".into() });
        assert_eq!(
            t,
            "    PID  NODE S    CPU(s)  RSS(KiB) COMMAND\n    120     3 S      1.50      2048 sleep\n1234567    12 ?         -         - x\n"
        );
    }
}
