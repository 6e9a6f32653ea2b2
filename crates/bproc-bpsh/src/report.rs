//! End-of-run views beyond BProc: `--fold` (identical outputs printed once under the nodes
//! that produced them, like `dshbak -c`), `--report` (each node's outcome) and `--json`.

use std::collections::BTreeMap;

/// How a node's process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exited with a code.
    Exit(i32),
    /// Killed by a signal.
    Signal(i32),
    /// Killed by `--timeout`.
    TimedOut,
    /// Its node was lost.
    NodeLost,
    /// Never started: the error code (errno or BProc's `BE_*`) and the reason.
    NotStarted {
        /// The code.
        code: i32,
        /// What failed.
        why: String,
    },
}

/// One rank's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Node number.
    pub node: i32,
    /// Outcome.
    pub outcome: Outcome,
}

impl Outcome {
    fn text(&self) -> String {
        match self {
            Outcome::Exit(c) => format!("exit {c}"),
            Outcome::Signal(s) => format!("killed by signal {s}"),
            Outcome::TimedOut => "timed out".into(),
            Outcome::NodeLost => "node lost".into(),
            Outcome::NotStarted { why, .. } => format!("not started: {why}"),
        }
    }
}

/// Node numbers as a compact list of ranges: `0-3,5,7-8`.
pub fn ranges(nodes: &[i32]) -> String {
    let mut v = nodes.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if i == j { v[i].to_string() } else { format!("{}-{}", v[i], v[j]) });
        i = j + 1;
    }
    out.join(",")
}

/// `--fold`: each distinct result once, under the nodes that produced it, in the order of
/// the first such node. A result is the node's outcome with its stdout and its stderr, each
/// kept to its own stream: the header (the nodes and how they ended, `0-3 (exit 0)`) and the
/// stdout text go to stdout, the stderr text to stderr. Every node is listed, those without
/// output too, so each exit code shows. Returns the pieces to write, in order, each with its
/// stream ([`crate::output::STDOUT`] or [`crate::output::STDERR`]).
pub fn fold(rows: &[Row], outputs: &[(Vec<u8>, Vec<u8>)]) -> Vec<(u8, Vec<u8>)> {
    type Key<'a> = (&'a [u8], &'a [u8], String);
    let mut groups: Vec<(Key<'_>, Vec<i32>)> = Vec::new();
    for (r, (o, e)) in rows.iter().zip(outputs) {
        let key = (o.as_slice(), e.as_slice(), r.outcome.text());
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, ns)) => ns.push(r.node),
            None => groups.push((key, vec![r.node])),
        }
    }
    let rule = "-".repeat(16);
    let mut out = Vec::new();
    let whole = |text: &[u8]| {
        let mut t = text.to_vec();
        if !t.is_empty() && !t.ends_with(b"\n") {
            t.push(b'\n');
        }
        t
    };
    for ((o, e, outcome), ns) in groups {
        let header = format!("{rule}\n{} ({outcome})\n{rule}\n", ranges(&ns));
        out.push((crate::output::STDOUT, header.into_bytes()));
        if !o.is_empty() {
            out.push((crate::output::STDOUT, whole(o)));
        }
        if !e.is_empty() {
            out.push((crate::output::STDERR, whole(e)));
        }
    }
    out
}

/// `--report`: a table of outcomes, nodes with the same outcome grouped.
pub fn table(rows: &[Row]) -> String {
    let mut groups: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for r in rows {
        groups.entry(r.outcome.text()).or_default().push(r.node);
    }
    let mut lines: Vec<(String, String)> =
        groups.into_iter().map(|(what, ns)| (ranges(&ns), what)).collect();
    lines.sort_by_key(|(ns, _)| ns.split([',', '-']).next().and_then(|n| n.parse::<i64>().ok()));
    let width = lines.iter().map(|(ns, _)| ns.len()).max().unwrap_or(0).max(5);
    let mut out = format!("{:<width$}  result\n", "nodes");
    for (ns, what) in lines {
        out += &format!("{ns:<width$}  {what}\n");
    }
    out
}

/// BProc's code for a node lost with its process (`BE_SLAVEDIED`).
const SLAVE_DIED: i32 = 303;
/// The signal `--timeout` kills with.
const SIGKILL: i32 = 9;

/// `--json`: one object per rank and line, every field with one type whatever the outcome:
/// `node` (number), `outcome` (`exit`, `signal`, `timeout`, `node_lost`, `not_started`),
/// `value` (number: the exit code, the signal, the signal a timeout killed with, or the error
/// code of a node lost or of a start that failed), `reason` (text: how it ended, in words),
/// and `stdout` and `stderr` (text) with `stdout_base64` and `stderr_base64` (booleans): output
/// that is not UTF-8 is carried as base64 with its flag set, byte for byte.
pub fn json(rows: &[Row], outputs: &[(Vec<u8>, Vec<u8>)]) -> String {
    let text = |bytes: &[u8]| match std::str::from_utf8(bytes) {
        Ok(t) => (t.to_owned(), false),
        Err(_) => (base64(bytes), true),
    };
    let mut out = String::new();
    for (r, (o, e)) in rows.iter().zip(outputs) {
        let (kind, value) = match &r.outcome {
            Outcome::Exit(c) => ("exit", *c),
            Outcome::Signal(s) => ("signal", *s),
            Outcome::TimedOut => ("timeout", SIGKILL),
            Outcome::NodeLost => ("node_lost", SLAVE_DIED),
            Outcome::NotStarted { code, .. } => ("not_started", *code),
        };
        let ((stdout, stdout_b64), (stderr, stderr_b64)) = (text(o), text(e));
        let v = serde_json::json!({
            "node": r.node,
            "outcome": kind,
            "value": value,
            "reason": r.outcome.text(),
            "stdout": stdout,
            "stdout_base64": stdout_b64,
            "stderr": stderr,
            "stderr_base64": stderr_b64,
        });
        out += &v.to_string();
        out.push('\n');
    }
    out
}

/// Standard base64 (RFC 4648, with padding).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ranges() {
        assert_eq!(ranges(&[5, 0, 1, 2, 3, 7, 8]), "0-3,5,7-8");
        assert_eq!(ranges(&[4]), "4");
        assert_eq!(ranges(&[]), "");
    }

    #[test]
    fn fold_groups_identical_results() {
        let exit = |node, c| Row { node, outcome: Outcome::Exit(c) };
        let rows = [exit(0, 0), exit(1, 0), exit(2, 0), exit(3, 0), exit(4, 0), exit(5, 3)];
        let outs = vec![
            (b"same\n".to_vec(), vec![]),
            (b"other\n".to_vec(), b"warn".to_vec()),
            (b"same\n".to_vec(), vec![]),
            (vec![], vec![]),
            (b"sa".to_vec(), b"me\n".to_vec()),
            (b"same\n".to_vec(), vec![]),
        ];
        let pieces = fold(&rows, &outs);
        let stream = |n: u8| -> String {
            pieces
                .iter()
                .filter(|(s, _)| *s == n)
                .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
                .collect()
        };
        let rule = "-".repeat(16);
        // stdout and stderr stay apart; the same text with another exit code is another
        // group; a node without output is listed with its outcome.
        assert_eq!(
            stream(crate::output::STDOUT),
            format!(
                "{rule}\n0,2 (exit 0)\n{rule}\nsame\n{rule}\n1 (exit 0)\n{rule}\nother\n\
                 {rule}\n3 (exit 0)\n{rule}\n{rule}\n4 (exit 0)\n{rule}\nsa\n\
                 {rule}\n5 (exit 3)\n{rule}\nsame\n"
            )
        );
        assert_eq!(stream(crate::output::STDERR), "warn\nme\n");
    }

    #[test]
    fn report_table() {
        let rows = vec![
            Row { node: 0, outcome: Outcome::Exit(0) },
            Row { node: 1, outcome: Outcome::Exit(0) },
            Row { node: 2, outcome: Outcome::Signal(9) },
            Row {
                node: 10,
                outcome: Outcome::NotStarted { code: 301, why: "Node is down".into() },
            },
        ];
        assert_eq!(
            table(&rows),
            "nodes  result\n0-1    exit 0\n2      killed by signal 9\n10     not started: Node is down\n"
        );
    }

    #[test]
    fn json_lines() {
        let rows = vec![Row { node: 3, outcome: Outcome::Exit(2) }];
        let j = json(&rows, &[(b"o\"\n".to_vec(), b"e".to_vec())]);
        let v: serde_json::Value = serde_json::from_str(j.trim()).unwrap();
        assert_eq!(v["node"], 3);
        assert_eq!(v["outcome"], "exit");
        assert_eq!(v["value"], 2);
        assert_eq!(v["reason"], "exit 2");
        assert_eq!(v["stdout"], "o\"\n");
        assert_eq!(v["stdout_base64"], false);
    }

    /// Issue "hardening", item 17: `value` is a number for every outcome, and output that is
    /// not UTF-8 is carried byte for byte (before: U+FFFD, and a value that was a number, null
    /// or text by outcome).
    #[test]
    fn json_keeps_types_and_bytes() {
        let rows = [
            Row { node: 0, outcome: Outcome::Exit(0) },
            Row { node: 1, outcome: Outcome::Signal(15) },
            Row { node: 2, outcome: Outcome::TimedOut },
            Row { node: 3, outcome: Outcome::NodeLost },
            Row { node: 4, outcome: Outcome::NotStarted { code: 2, why: "/x: gone".into() } },
        ];
        let binary = vec![0xff, 0x00, b'a', 0xc3];
        let outs = vec![(binary.clone(), b"ok".to_vec()); 5];
        for (line, value) in json(&rows, &outs).lines().zip([0, 15, 9, 303, 2]) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["value"], value, "{line}");
            assert!(v["reason"].is_string() && v["outcome"].is_string(), "{line}");
            assert_eq!(v["stdout"], "/wBhww==");
            assert_eq!(v["stdout_base64"], true);
            assert_eq!((&v["stderr"], &v["stderr_base64"]), (&"ok".into(), &false.into()));
        }
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
