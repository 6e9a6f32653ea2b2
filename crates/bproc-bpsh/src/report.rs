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
    /// Never started, with the reason.
    NotStarted(String),
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
            Outcome::NotStarted(why) => format!("not started: {why}"),
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

/// `--json`: one object per rank and line: node, outcome, code or signal, stdout, stderr.
pub fn json(rows: &[Row], outputs: &[(Vec<u8>, Vec<u8>)]) -> String {
    let mut out = String::new();
    for (r, (o, e)) in rows.iter().zip(outputs) {
        let (kind, value) = match &r.outcome {
            Outcome::Exit(c) => ("exit", serde_json::json!(c)),
            Outcome::Signal(s) => ("signal", serde_json::json!(s)),
            Outcome::TimedOut => ("timeout", serde_json::Value::Null),
            Outcome::NodeLost => ("node_lost", serde_json::Value::Null),
            Outcome::NotStarted(why) => ("not_started", serde_json::json!(why)),
        };
        let v = serde_json::json!({
            "node": r.node,
            "outcome": kind,
            "value": value,
            "stdout": String::from_utf8_lossy(o),
            "stderr": String::from_utf8_lossy(e),
        });
        out += &v.to_string();
        out.push('\n');
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
            Row { node: 10, outcome: Outcome::NotStarted("Node is down".into()) },
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
        assert_eq!(v["stdout"], "o\"\n");
    }
}
