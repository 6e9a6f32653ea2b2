//! BProc's node specification grammar ("nodespec"), evaluated against a node table.
//!
//! bpsh, bpstat and `bpctl -S` select nodes with strings such as `0-3,7`, `allup` or
//! `n[0-7,9]`. This module is the pure evaluator: it takes the node table (as the master reports
//! it, slave nodes only) and a spec, and returns the selected entries in order. It follows
//! `bproc_nodefilter()` from BProc 4.0.0pre8 (`clients/bproc.c`).
//!
//! # Grammar
//!
//! A spec is a comma-separated list of chunks. Runs of commas are skipped, and commas inside
//! brackets do not split. Each chunk appends to the result in order and duplicates are kept, so
//! `1,1` selects node 1 twice. A chunk is the first of these forms that matches it completely:
//!
//! 1. **Number or range**, with an optional leading `n` or `.`: `5`, `n5`, `.5`, `3-5`, `n3-n5`,
//!    or `5-` (5 up to the highest configured number). Numbers are read like C
//!    `strtol(s, &end, 0)`: `0x10` is hex, `010` octal, a sign and leading white space are
//!    allowed. Only configured numbers are selected; the others, and negative numbers such as
//!    `-1`, are reported in [`Selection::unconfigured`] instead. A reversed range (`8-5`) selects
//!    nothing and is not an error.
//! 2. **`master`**: the synthetic master entry, [`master_entry`].
//! 3. **`all`**: every configured node in node-number order.
//! 4. **State class**, a word `[A-Za-z][A-Za-z0-9_]*`: a leading `all` is dropped, then a
//!    leading `not` inverts the match, and every configured node whose state equals (or, when
//!    inverted, differs from) the rest is selected in node-number order. `allup` is `up`;
//!    `notup` and `allnotdown` invert. The word must be a known state ([`KNOWN_STATES`]) or
//!    one some node has now (set with `bpctl -s`); anything else is an error (BProc took any
//!    word for a state, so a typo selected nothing).
//! 5. **Hostlist** (an extension, not in BProc): an optional `n` or `.` and a bracketed list of
//!    numbers and ranges, `n[0-7,9]`, meaning the same as `0-7,9`.
//!
//! Anything else makes the whole spec invalid.
//!
//! # Differences from BProc
//!
//! BProc scans the string with a cursor rather than splitting it into chunks, which lets some
//! forms run together without a comma (`up.5` is `up` then `.5`; `3-up` is `3-` then `up`;
//! `1-2-3` is `1-2` then `-3`), rejects a trailing comma (`1,`), and returns an empty set for
//! *any* spec, even an invalid one or `master`, when no slave node is configured. Here every
//! chunk must match one form entirely, empty chunks are always skipped, and an empty node table
//! changes nothing but the contents of the table.
//!
//! ```
//! use bproc_client::nodespec::filter;
//! use bproc_proto::NodeStatus;
//! let table: Vec<NodeStatus> = (0..4)
//!     .map(|n| NodeStatus { node: n, state: "up".into(), ..Default::default() })
//!     .collect();
//! let sel = filter(&table, "n[0-1],3,9").unwrap();
//! let numbers: Vec<i32> = sel.nodes.iter().map(|n| n.node).collect();
//! assert_eq!(numbers, [0, 1, 3]);
//! assert_eq!(sel.unconfigured, [9]);
//! ```

use std::collections::BTreeMap;

use bproc_proto::NodeStatus;

/// The node number of the master (front end).
pub const NODE_MASTER: i32 = -1;

/// Longest range whose unconfigured numbers are listed one by one in
/// [`Selection::unconfigured`]; a longer one records only its unconfigured end points.
const MAX_LISTED_RANGE: i128 = 65536;

/// The result of evaluating a spec: selected nodes in order (duplicates kept) and the numbers
/// that were named but are not configured (so callers can warn).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selection {
    /// Selected entries, in spec order; a node named twice appears twice.
    pub nodes: Vec<NodeStatus>,
    /// Numbers named by number, range or hostlist that are not configured, in spec order.
    /// A range longer than 65536 numbers contributes only its unconfigured end points; a
    /// reversed range contributes nothing.
    pub unconfigured: Vec<i64>,
}

/// The states every cluster has: BProc's (`up`, `down`, `boot`, `error`, and the Scyld
/// vocabulary `unavailable`, `reboot`, `halt`, `pwroff`) and `unreachable`, a node whose link
/// failed while its session may still resume.
pub const KNOWN_STATES: &[&str] =
    &["up", "down", "boot", "error", "unreachable", "unavailable", "reboot", "halt", "pwroff"];

/// Why a node spec could not be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeSpecError {
    /// The spec (quoted in full, as BProc does) does not follow the grammar.
    #[error("invalid node specification \"{0}\"")]
    Invalid(String),
    /// A word of the spec is neither a known state nor one a node has.
    #[error("invalid node specification \"{spec}\": {}", unknown_state(word))]
    UnknownState {
        /// The whole spec.
        spec: String,
        /// The word, without `all` and `not`.
        word: String,
    },
}

fn unknown_state(word: &str) -> String {
    format!("\"{word}\" is not a node state ({}, or one a node has now)", KNOWN_STATES.join(", "))
}

impl NodeSpecError {
    /// What is wrong beyond the spec being invalid, for callers that print BProc's
    /// `Invalid node specification "SPEC"` and add `: REASON`.
    pub fn reason(&self) -> Option<String> {
        match self {
            NodeSpecError::Invalid(_) => None,
            NodeSpecError::UnknownState { word, .. } => Some(unknown_state(word)),
        }
    }

    /// BProc's message (`Invalid node specification "SPEC"`), with the reason when there is
    /// one.
    pub fn bproc_message(&self) -> String {
        let spec = match self {
            NodeSpecError::Invalid(s) | NodeSpecError::UnknownState { spec: s, .. } => s,
        };
        match self.reason() {
            Some(r) => format!("Invalid node specification \"{spec}\": {r}"),
            None => format!("Invalid node specification \"{spec}\""),
        }
    }
}

/// The synthetic master entry: node -1, state "up", mode 0o111, uid 0, gid 0, addr None,
/// info None.
pub fn master_entry() -> NodeStatus {
    NodeStatus {
        node: NODE_MASTER,
        state: "up".to_owned(),
        mode: 0o111,
        uid: 0,
        gid: 0,
        addr: None,
        info: None,
    }
}

/// Parses one node name as used by bpcp/brsh hosts: "3", "n3", ".3", "-1", "master" ->
/// Some(number), else None.
///
/// Numbers follow the nodespec rules (`0x10` and `010` are accepted) but must be the whole
/// string, without white space, and must be -1 or more.
///
/// ```
/// use bproc_client::nodespec::parse_node_name;
/// assert_eq!(parse_node_name("n3"), Some(3));
/// assert_eq!(parse_node_name(".3"), Some(3));
/// assert_eq!(parse_node_name("master"), Some(-1));
/// assert_eq!(parse_node_name("node3"), None);
/// ```
pub fn parse_node_name(s: &str) -> Option<i32> {
    if s == "master" {
        return Some(NODE_MASTER);
    }
    let digits = strip_prefix(s.as_bytes());
    if digits.first().is_some_and(u8::is_ascii_whitespace) {
        return None;
    }
    let (value, used) = strtol0(digits)?;
    if used != digits.len() {
        return None;
    }
    i32::try_from(value).ok().filter(|&n| n >= NODE_MASTER)
}

/// Evaluates `spec` against the node table `nodes` (table order).
///
/// Entries with a negative node number in the table are ignored; if a number appears twice,
/// the later entry wins, as in BProc's id map.
///
/// ```
/// use bproc_client::{nodespec, NodeStatus};
/// let node = |n, state: &str| NodeStatus {
///     node: n,
///     state: state.into(),
///     mode: 0o111,
///     uid: 0,
///     gid: 0,
///     addr: None,
///     info: None,
/// };
/// let table = [node(0, "up"), node(1, "down"), node(2, "up"), node(3, "boot")];
/// let numbers = |spec| -> Vec<i32> {
///     nodespec::filter(&table, spec).unwrap().nodes.iter().map(|n| n.node).collect()
/// };
/// assert_eq!(numbers("allup"), [0, 2]);
/// assert_eq!(numbers("0-1,3"), [0, 1, 3]);
/// assert_eq!(numbers("n[2-3]"), [2, 3]);
/// assert_eq!(nodespec::filter(&table, "0-7").unwrap().unconfigured, [4, 5, 6, 7]);
/// assert!(nodespec::filter(&table, "1-x").is_err());
/// ```
pub fn filter(nodes: &[NodeStatus], spec: &str) -> Result<Selection, NodeSpecError> {
    let invalid = || NodeSpecError::Invalid(spec.to_owned());
    let table: BTreeMap<i32, &NodeStatus> =
        nodes.iter().filter(|n| n.node >= 0).map(|n| (n.node, n)).collect();
    let mut eval = Eval { table, out: Selection::default() };
    // A chunk outside the grammar makes the spec invalid first; then an unknown state.
    let mut unknown = None;
    for chunk in split_chunks(spec).ok_or_else(invalid)? {
        if chunk.is_empty() {
            continue;
        }
        match eval.chunk(chunk) {
            Chunk::Ok => {}
            Chunk::Invalid => return Err(invalid()),
            Chunk::UnknownState(word) => {
                unknown.get_or_insert(NodeSpecError::UnknownState { spec: spec.to_owned(), word });
            }
        }
    }
    match unknown {
        Some(e) => Err(e),
        None => Ok(eval.out),
    }
}

/// The node numbers `spec` names by number alone (numbers, ranges with both ends,
/// hostlists), ascending and each once, when there are at most `limit` of them that could be
/// configured (0 or more); `None` when it needs the table (`all`, a state, `master`, a range
/// such as `5-` that runs to the highest node), names more, or is invalid ([`filter`] then
/// says why). [`filter`] over the table's entries for these numbers selects, and finds
/// unconfigured, what it does over the whole table: a launch to a few nodes of a large cluster
/// need not fetch all of it.
///
/// ```
/// use bproc_client::nodespec::numbered;
/// assert_eq!(numbered("3,n[0-1],3", 16), Some(vec![0, 1, 3]));
/// assert_eq!(numbered("0-99", 16), None);
/// assert_eq!(numbered("up", 16), None);
/// ```
pub fn numbered(spec: &str, limit: usize) -> Option<Vec<i32>> {
    let mut named = std::collections::BTreeSet::new();
    for chunk in split_chunks(spec)?.into_iter().filter(|c| !c.is_empty()) {
        let items = match parse_number_or_range(chunk) {
            Some(item) => vec![item],
            None => parse_hostlist(chunk)?,
        };
        for (lo, upper) in items {
            let hi = match upper {
                Upper::Same => lo,
                Upper::To(hi) => hi,
                Upper::Open => return None,
            };
            // Only 0..=i32::MAX can be configured; the rest is reported, never looked up.
            let (lo, hi) = (lo.max(0), hi.min(i32::MAX.into()));
            if lo > hi {
                continue;
            }
            if hi - lo >= limit as i64 {
                return None;
            }
            named.extend((lo..=hi).filter_map(|n| i32::try_from(n).ok()));
            if named.len() > limit {
                return None;
            }
        }
    }
    Some(named.into_iter().collect())
}

/// How one chunk evaluated.
enum Chunk {
    Ok,
    /// It matches no form.
    Invalid,
    /// A state word that no node has and no cluster knows.
    UnknownState(String),
}

/// The upper end of a number chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upper {
    /// A single number: the range is just the lower end.
    Same,
    /// `A-`: up to the highest configured number.
    Open,
    /// `A-B`.
    To(i64),
}

/// Evaluation state: the id map and the growing result.
struct Eval<'a> {
    table: BTreeMap<i32, &'a NodeStatus>,
    out: Selection,
}

impl Eval<'_> {
    /// Appends the nodes of one non-empty chunk.
    fn chunk(&mut self, chunk: &str) -> Chunk {
        if let Some((lo, upper)) = parse_number_or_range(chunk) {
            self.number_or_range(lo, upper);
            return Chunk::Ok;
        }
        match chunk {
            "master" => {
                self.out.nodes.push(master_entry());
                return Chunk::Ok;
            }
            "all" => {
                self.out.nodes.extend(self.table.values().map(|n| (*n).clone()));
                return Chunk::Ok;
            }
            _ => {}
        }
        if is_state_token(chunk) {
            let word = chunk.strip_prefix("all").unwrap_or(chunk);
            let (word, invert) = match word.strip_prefix("not") {
                Some(rest) => (rest, true),
                None => (word, false),
            };
            if !KNOWN_STATES.contains(&word) && !self.table.values().any(|n| n.state == word) {
                return Chunk::UnknownState(word.to_owned());
            }
            self.out.nodes.extend(
                self.table.values().filter(|n| (n.state == word) != invert).map(|n| (*n).clone()),
            );
            return Chunk::Ok;
        }
        if let Some(items) = parse_hostlist(chunk) {
            for (lo, upper) in items {
                self.number_or_range(lo, upper);
            }
            return Chunk::Ok;
        }
        Chunk::Invalid
    }

    /// Highest configured number, or -1 when nothing is configured.
    fn max_id(&self) -> i64 {
        self.table.keys().next_back().map_or(-1, |&n| n.into())
    }

    fn configured(&self, n: i64) -> bool {
        i32::try_from(n).is_ok_and(|n| self.table.contains_key(&n))
    }

    fn number_or_range(&mut self, lo: i64, upper: Upper) {
        let hi = match upper {
            Upper::Same => lo,
            Upper::To(hi) => hi,
            Upper::Open => {
                let max = self.max_id();
                if lo > max {
                    // Nothing at or above `lo` is configured, so `lo` itself is not.
                    self.out.unconfigured.push(lo);
                    return;
                }
                max
            }
        };
        if lo > hi {
            return;
        }
        // Configured numbers are i32 and ≥ 0, so clamping keeps every configured one.
        let clamp = |v: i64| i32::try_from(v.clamp(0, i32::MAX.into())).unwrap_or(i32::MAX);
        if hi >= 0 {
            let picked = self.table.range(clamp(lo)..=clamp(hi)).map(|(_, n)| (*n).clone());
            self.out.nodes.extend(picked);
        }
        if i128::from(hi) - i128::from(lo) >= MAX_LISTED_RANGE {
            for end in [lo, hi] {
                if !self.configured(end) {
                    self.out.unconfigured.push(end);
                }
            }
        } else {
            for n in lo..=hi {
                if !self.configured(n) {
                    self.out.unconfigured.push(n);
                }
            }
        }
    }
}

/// Splits `spec` on commas outside brackets. `None` if the brackets do not balance or nest.
fn split_chunks(spec: &str) -> Option<Vec<&str>> {
    let mut chunks = Vec::new();
    let mut depth = 0u32;
    let mut start = 0;
    for (i, c) in spec.char_indices() {
        match c {
            '[' if depth == 0 => depth = 1,
            ']' if depth == 1 => depth = 0,
            '[' | ']' => return None,
            ',' if depth == 0 => {
                chunks.push(&spec[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return None;
    }
    chunks.push(&spec[start..]);
    Some(chunks)
}

/// Drops one leading `n` or `.` (the Steven James patch of 4.0.0pre6).
fn strip_prefix(s: &[u8]) -> &[u8] {
    match s.first() {
        Some(b'n' | b'.') => &s[1..],
        _ => s,
    }
}

/// C `strtol(s, &end, 0)`: leading white space, an optional sign, then `0x` hex, `0` octal or
/// decimal digits. Returns the value (saturated to i64) and the bytes consumed, or `None` when
/// no digit was read.
fn strtol0(s: &[u8]) -> Option<(i64, usize)> {
    let mut i =
        s.iter().take_while(|c| matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')).count();
    let negative = match s.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let hex = s.get(i) == Some(&b'0')
        && matches!(s.get(i + 1), Some(b'x' | b'X'))
        && s.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
    let (radix, start) = match s.get(i) {
        _ if hex => (16u32, i + 2),
        // The leading 0 is an octal digit itself, so "0" and "0x" (no hex digit) read as 0.
        Some(b'0') => (8, i),
        _ => (10, i),
    };
    let mut end = start;
    let mut value: i64 = 0;
    while let Some(d) = s.get(end).and_then(|&c| char::from(c).to_digit(radix)) {
        value = value.saturating_mul(radix.into()).saturating_add(d.into());
        end += 1;
    }
    if end == start {
        return None;
    }
    Some((if negative { -value } else { value }, end))
}

/// BProc's `get_number` inside a chunk: prefix, number, and what follows it.
fn get_number(s: &[u8]) -> Option<(i64, &[u8])> {
    let digits = strip_prefix(s);
    let (value, used) = strtol0(digits)?;
    Some((value, &digits[used..]))
}

/// Form 1 over a whole chunk (or one hostlist item): `A`, `A-`, or `A-B`.
fn parse_number_or_range(chunk: &str) -> Option<(i64, Upper)> {
    let (lo, rest) = get_number(chunk.as_bytes())?;
    match rest {
        [] => Some((lo, Upper::Same)),
        [b'-'] => Some((lo, Upper::Open)),
        [b'-', tail @ ..] => match get_number(tail)? {
            (hi, []) => Some((lo, Upper::To(hi))),
            _ => None,
        },
        _ => None,
    }
}

/// Form 4: `[A-Za-z][A-Za-z0-9_]*`.
fn is_state_token(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|c| c.is_ascii_alphabetic())
        && bytes.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// Form 5: `n[items]`, `.[items]` or `[items]`, items being numbers and ranges separated by
/// commas (empty items skipped, at least one required).
fn parse_hostlist(chunk: &str) -> Option<Vec<(i64, Upper)>> {
    let body = chunk.strip_prefix(['n', '.']).unwrap_or(chunk);
    let inner = body.strip_prefix('[')?.strip_suffix(']')?;
    let items = inner
        .split(',')
        .filter(|item| !item.is_empty())
        .map(parse_number_or_range)
        .collect::<Option<Vec<_>>>()?;
    (!items.is_empty()).then_some(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: i32, state: &str) -> NodeStatus {
        NodeStatus { node: n, state: state.to_owned(), mode: 0o111, ..Default::default() }
    }

    /// Nodes 0-7: 0-3 up, 4 down, 5 boot, 6 up, 7 error; listed out of order on purpose.
    fn table() -> Vec<NodeStatus> {
        vec![
            node(4, "down"),
            node(0, "up"),
            node(1, "up"),
            node(2, "up"),
            node(3, "up"),
            node(5, "boot"),
            node(6, "up"),
            node(7, "error"),
        ]
    }

    fn numbers(spec: &str) -> Vec<i32> {
        filter(&table(), spec).unwrap().nodes.iter().map(|n| n.node).collect()
    }

    fn unconfigured(spec: &str) -> Vec<i64> {
        filter(&table(), spec).unwrap().unconfigured
    }

    fn invalid(spec: &str) {
        assert_eq!(filter(&table(), spec), Err(NodeSpecError::Invalid(spec.to_owned())), "{spec}");
    }

    #[test]
    fn single_numbers_and_prefixes() {
        assert_eq!(numbers("5"), [5]);
        assert_eq!(numbers("n5"), [5]);
        assert_eq!(numbers(".5"), [5]);
        assert_eq!(numbers("0"), [0]);
        assert!(unconfigured("5").is_empty());
    }

    #[test]
    fn strtol_bases() {
        assert_eq!(numbers("0x3"), [3]);
        assert_eq!(numbers("0X7"), [7]);
        assert_eq!(numbers("07"), [7]);
        assert_eq!(unconfigured("010"), [8]);
        assert_eq!(numbers("n0x2-n05"), [2, 3, 4, 5]);
        // strtol skips leading white space and takes a sign.
        assert_eq!(numbers("1, 2"), [1, 2]);
        assert_eq!(numbers("+3"), [3]);
        invalid("08");
        invalid("0x");
        invalid("0xg");
        invalid("1 ");
    }

    #[test]
    fn hex_and_octal_against_sparse_table() {
        let t: Vec<_> = [16, 8, 1000].iter().map(|&n| node(n, "up")).collect();
        let sel = filter(&t, "0x10,010,01750").unwrap();
        assert_eq!(sel.nodes.iter().map(|n| n.node).collect::<Vec<_>>(), [16, 8, 1000]);
    }

    #[test]
    fn ranges() {
        assert_eq!(numbers("3-5"), [3, 4, 5]);
        assert_eq!(numbers("n3-n5"), [3, 4, 5]);
        assert_eq!(numbers(".3-.5"), [3, 4, 5]);
        assert_eq!(numbers("5-"), [5, 6, 7]);
        assert_eq!(numbers("0-"), [0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(numbers("5-5"), [5]);
    }

    #[test]
    fn reversed_range_is_empty_and_valid() {
        let sel = filter(&table(), "8-5").unwrap();
        assert!(sel.nodes.is_empty());
        assert!(sel.unconfigured.is_empty());
    }

    #[test]
    fn minus_one_adds_nothing() {
        let sel = filter(&table(), "-1").unwrap();
        assert!(sel.nodes.is_empty());
        assert_eq!(sel.unconfigured, [-1]);
        // A range reaching below zero keeps its configured part.
        assert_eq!(numbers("-2-1"), [0, 1]);
        assert_eq!(unconfigured("-2-1"), [-2, -1]);
    }

    #[test]
    fn unconfigured_recording() {
        assert_eq!(numbers("6-10"), [6, 7]);
        assert_eq!(unconfigured("6-10"), [8, 9, 10]);
        assert_eq!(unconfigured("9,2,12"), [9, 12]);
        // `A-` above the highest configured number names A.
        assert_eq!(unconfigured("9-"), [9]);
        assert!(numbers("9-").is_empty());
        // Huge ranges record only their unconfigured end points.
        assert_eq!(numbers("0-100000"), [0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(unconfigured("0-100000"), [100000]);
        assert_eq!(unconfigured("-5-0x7fffffffff"), [-5, 0x7f_ffff_ffff]);
        assert_eq!(numbers("-99999999999999999999999-"), [0, 1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn master_entry_fields() {
        let sel = filter(&table(), "master").unwrap();
        assert_eq!(sel.nodes, [master_entry()]);
        let m = master_entry();
        assert_eq!((m.node, m.state.as_str(), m.mode, m.uid, m.gid), (-1, "up", 0o111, 0, 0));
        assert_eq!((m.addr, m.info), (None, None));
        assert_eq!(numbers("master,0"), [-1, 0]);
    }

    #[test]
    fn all_is_in_number_order() {
        assert_eq!(numbers("all"), [0, 1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn state_classes() {
        assert_eq!(numbers("up"), [0, 1, 2, 3, 6]);
        assert_eq!(numbers("allup"), [0, 1, 2, 3, 6]);
        assert_eq!(numbers("notup"), [4, 5, 7]);
        assert_eq!(numbers("allnotdown"), [0, 1, 2, 3, 5, 6, 7]);
        assert_eq!(numbers("allboot"), [5]);
        assert_eq!(numbers("error"), [7]);
        // A known state no node has selects nothing.
        assert!(numbers("unreachable").is_empty());
        assert!(numbers("allpwroff").is_empty());
    }

    /// Issue "hardening", item 10: a word that is neither a known state nor one a node has is
    /// an error (BProc took it for a state and selected nothing, so `bpctl -S foo -s up` did
    /// nothing and exited 0).
    #[test]
    fn unknown_words_are_errors() {
        let unknown = |spec: &str, word: &str| {
            assert_eq!(
                filter(&table(), spec),
                Err(NodeSpecError::UnknownState { spec: spec.into(), word: word.into() }),
                "{spec}"
            );
        };
        unknown("foo", "foo");
        unknown("bogus_state2", "bogus_state2");
        unknown("Up", "Up");
        unknown("notfoo", "foo");
        unknown("1,allfoo", "foo");
        // `n` + non-number falls through to a state word.
        unknown("n5x", "n5x");
        unknown("nodes", "nodes");
        // A state set on some node (bpctl -s) is a word like the others.
        let t = vec![node(0, "maintenance"), node(1, "up")];
        assert_eq!(filter(&t, "maintenance").unwrap().nodes, [node(0, "maintenance")]);
        assert_eq!(filter(&t, "notmaintenance").unwrap().nodes, [node(1, "up")]);
        let e = filter(&table(), "foo").unwrap_err();
        assert_eq!(
            e.bproc_message(),
            "Invalid node specification \"foo\": \"foo\" is not a node state (up, down, boot, \
             error, unreachable, unavailable, reboot, halt, pwroff, or one a node has now)"
        );
    }

    #[test]
    fn state_with_all_prefix_needs_doubling() {
        let t = vec![node(0, "allocated"), node(1, "up")];
        let pick =
            |s: &str| -> Vec<i32> { filter(&t, s).unwrap().nodes.iter().map(|n| n.node).collect() };
        // `allocated` reads as `all` + `ocated`, a state nobody has.
        assert!(matches!(
            filter(&t, "allocated"),
            Err(NodeSpecError::UnknownState { word, .. }) if word == "ocated"
        ));
        assert_eq!(pick("allallocated"), [0]);
    }

    #[test]
    fn duplicates_and_order_are_kept() {
        assert_eq!(numbers("1,1"), [1, 1]);
        assert_eq!(numbers("5,0-1,up"), [5, 0, 1, 0, 1, 2, 3, 6]);
    }

    #[test]
    fn comma_runs_and_empty_spec() {
        assert_eq!(numbers(",,2"), [2]);
        assert_eq!(numbers("1,,,2,"), [1, 2]);
        assert!(numbers("").is_empty());
        assert!(numbers(",").is_empty());
    }

    #[test]
    fn invalid_specs() {
        for spec in [
            "foo!", "1x", "!up", "all!up", "-", "5-8x", "1-2-3", "up.5", "3-up", "master-1", ".up",
            "[", "n[", "n[]", "n[1", "n1]", "n[[1]]", "n[1]x", "n[a]", "x[1]", "1,foo!",
        ] {
            invalid(spec);
        }
    }

    /// Over the entries it names, a numbered spec selects and reports unconfigured what it
    /// does over the whole table; the others need the table.
    #[test]
    fn numbered_specs_need_only_their_nodes() {
        for spec in ["3", "n3,1,3", "0-2,9", "n[0-2,5],7", "8-5", "-1,2", ".[6,1]", "0x2,010", ""] {
            let named = numbered(spec, 16).unwrap_or_else(|| panic!("{spec}"));
            let some: Vec<NodeStatus> =
                table().into_iter().filter(|n| named.contains(&n.node)).collect();
            assert_eq!(filter(&some, spec), filter(&table(), spec), "{spec}");
        }
        assert_eq!(numbered("n3,1,3", 16), Some(vec![1, 3]));
        assert_eq!(numbered("-5--1", 16), Some(vec![]));
        for spec in ["all", "up", "master", "5-", "n[6-]", "0,up", "1x", "n[", "0-16"] {
            assert_eq!(numbered(spec, 16), None, "{spec}");
        }
        // The bound counts numbers, not chunks: sixteen fit, seventeen do not.
        assert_eq!(numbered("0-15", 16).map(|v| v.len()), Some(16));
        assert_eq!(numbered("0-7,8-15,3", 16).map(|v| v.len()), Some(16));
        assert_eq!(numbered("0-7,8-16", 16), None);
        assert_eq!(numbered(&format!("0-{}", i64::MAX), 16), None);
    }

    #[test]
    fn hostlists() {
        assert_eq!(numbers("n[0-3]"), [0, 1, 2, 3]);
        assert_eq!(numbers("n[0-2,5]"), [0, 1, 2, 5]);
        assert_eq!(numbers(".[6,1]"), [6, 1]);
        assert_eq!(numbers("[7]"), [7]);
        assert_eq!(numbers("n[0-3,5],7"), [0, 1, 2, 3, 5, 7]);
        assert_eq!(numbers("up,n[4-5],,n[0x1]"), [0, 1, 2, 3, 6, 4, 5, 1]);
        assert_eq!(numbers("n[6-]"), [6, 7]);
        assert_eq!(numbers("n[1,,2]"), [1, 2]);
        assert_eq!(unconfigured("n[6-9,12]"), [8, 9, 12]);
    }

    #[test]
    fn sparse_configured_numbers() {
        let t: Vec<_> = (1000..1004).map(|n| node(n, "up")).collect();
        let pick = |s: &str| filter(&t, s).unwrap();
        let nums = |s: &Selection| s.nodes.iter().map(|n| n.node).collect::<Vec<_>>();
        assert_eq!(nums(&pick("all")), [1000, 1001, 1002, 1003]);
        assert_eq!(nums(&pick("1002-")), [1002, 1003]);
        assert_eq!(nums(&pick("n[1001-1002]")), [1001, 1002]);
        let sel = pick("998-1001");
        assert_eq!(nums(&sel), [1000, 1001]);
        assert_eq!(sel.unconfigured, [998, 999]);
        let sel = pick("0-");
        assert_eq!(nums(&sel), [1000, 1001, 1002, 1003]);
        assert_eq!(sel.unconfigured, (0..1000).collect::<Vec<i64>>());
        assert_eq!(pick("5").unconfigured, [5]);
    }

    #[test]
    fn empty_table() {
        let sel = filter(&[], "0-3,all,up,master").unwrap();
        assert_eq!(sel.nodes, [master_entry()]);
        assert_eq!(sel.unconfigured, [0, 1, 2, 3]);
        assert_eq!(filter(&[], "0-").unwrap().unconfigured, [0]);
        assert!(filter(&[], "foo!").is_err());
    }

    #[test]
    fn later_duplicate_table_entry_wins() {
        let t = vec![node(1, "down"), node(1, "up"), node(-1, "up")];
        let sel = filter(&t, "all").unwrap();
        assert_eq!(sel.nodes, [node(1, "up")]);
    }

    #[test]
    fn node_names() {
        assert_eq!(parse_node_name("3"), Some(3));
        assert_eq!(parse_node_name("n3"), Some(3));
        assert_eq!(parse_node_name(".3"), Some(3));
        assert_eq!(parse_node_name("-1"), Some(-1));
        assert_eq!(parse_node_name("n-1"), Some(-1));
        assert_eq!(parse_node_name("master"), Some(-1));
        assert_eq!(parse_node_name("0x10"), Some(16));
        for bad in ["", "n", "-2", "3x", " 3", "n 3", "host", "4294967296", "1-2", "n[1]"] {
            assert_eq!(parse_node_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn error_message() {
        let err = filter(&table(), "a,b!").unwrap_err();
        assert_eq!(err.to_string(), "invalid node specification \"a,b!\"");
    }
}
