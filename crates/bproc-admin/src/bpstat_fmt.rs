//! bpstat's output formats, byte for byte as BProc 4.0.0pre8 prints them
//! (`clients/bpstat.c`).
//!
//! Everything here is pure: functions take the selected node entries and return the text to
//! print. The only outside inputs are user and group names, which come through the [`Names`]
//! trait so that tests can supply their own, and the terminal width, which the caller passes
//! in (see [`terminal_cols`]).
//!
//! The formats are:
//! - [`compact`] (`-c`, the default): nodes with the same state, owner, group and mode grouped
//!   on one row, consecutive numbers written as ranges, columns sized to the terminal;
//! - [`long`] (`-l`): one line per node with its address;
//! - [`addresses`], [`statuses`], [`numbers`], [`total`] (`-a`, `-s`, `-n`, `-t`): one value
//!   per line, for scripts;
//! - [`json`]: an extension for programs, with the machine report as well.
//!
//! [`sort_nodes`] applies bpstat's `-N`, `-S`, `-O` and `-R` ordering before formatting.

use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use bproc_proto::view::NodeView;
use bproc_proto::NodeStatus;

/// Width of the Status column (BProc's `BPROC_STATE_LEN`).
const STATUS_WIDTH: usize = 15;
/// Width of the Mode column.
const MODE_WIDTH: usize = 10;
/// Width of the User and Group columns.
const USER_WIDTH: usize = 8;
/// Columns taken by everything except the Node(s) column: the fixed widths plus five blanks
/// (four separators and the one BProc also subtracts).
const FIXED_COLUMNS: usize = STATUS_WIDTH + MODE_WIDTH + 2 * USER_WIDTH + 5;
/// Narrowest Node(s) column bpstat accepts.
const MIN_NODES_WIDTH: usize = 11;
/// Width bpstat assumes when stdout is not a terminal.
const DEFAULT_COLS: usize = 80;

/// How bpstat orders the selected nodes (`-N`, `-S`, `-O`, or none of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    /// No flag given: by status in compact mode, by number otherwise.
    #[default]
    Default,
    /// `-N`, `--sort-number`: by node number.
    Number,
    /// `-S`, `--sort-status`: by state (`strcmp`), ties by ascending number.
    Status,
    /// `-O`, `--keep-order`: in selection order.
    Keep,
}

/// Sorts in place as bpstat does: Default = status for compact mode else number; Status sorts
/// by state strcmp with ties by ascending number, and `reverse` reverses only the status
/// ordering (ties stay ascending); Number sorts by number (reverse reverses); Keep keeps the
/// selection order, and `reverse` reverses the list.
///
/// (BProc itself ignores `-R` together with `-O`; reversing is the more useful reading.)
pub fn sort_nodes(nodes: &mut [NodeStatus], sort: Sort, reverse: bool, compact: bool) {
    let sort = match sort {
        Sort::Default if compact => Sort::Status,
        Sort::Default => Sort::Number,
        other => other,
    };
    match sort {
        Sort::Status => nodes.sort_by(|a, b| match a.state.as_bytes().cmp(b.state.as_bytes()) {
            Ordering::Equal => a.node.cmp(&b.node),
            by_state if reverse => by_state.reverse(),
            by_state => by_state,
        }),
        Sort::Number if reverse => nodes.sort_by_key(|n| std::cmp::Reverse(n.node)),
        Sort::Number => nodes.sort_by_key(|n| n.node),
        Sort::Keep if reverse => nodes.reverse(),
        Sort::Keep | Sort::Default => {}
    }
}

/// "---x--x--x" style, always 10 chars: "---" + owner x + "--" + group x + "--" + other x.
pub fn mode_string(mode: u32) -> String {
    let x = |bit: u32| if mode & bit != 0 { 'x' } else { '-' };
    format!("---{}--{}--{}", x(0o100), x(0o010), x(0o001))
}

/// Resolves uids and gids to the names bpstat shows.
pub trait Names {
    /// The user name for `uid`, or `#<uid>` when there is none.
    fn user(&self, uid: u32) -> String;
    /// The group name for `gid`, or `#<gid>` when there is none.
    fn group(&self, gid: u32) -> String;
}

/// [`Names`] from the system databases (`getpwuid_r`, `getgrgid_r` through nix), each id
/// looked up once.
#[derive(Debug, Default)]
pub struct SystemNames {
    users: RefCell<HashMap<u32, String>>,
    groups: RefCell<HashMap<u32, String>>,
}

impl SystemNames {
    /// A resolver with empty caches.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Names for SystemNames {
    fn user(&self, uid: u32) -> String {
        self.users
            .borrow_mut()
            .entry(uid)
            .or_insert_with(|| match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
                Ok(Some(u)) => u.name,
                _ => format!("#{uid}"),
            })
            .clone()
    }

    fn group(&self, gid: u32) -> String {
        self.groups
            .borrow_mut()
            .entry(gid)
            .or_insert_with(|| {
                match nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)) {
                    Ok(Some(g)) => g.name,
                    _ => format!("#{gid}"),
                }
            })
            .clone()
    }
}

/// Why a table could not be formatted.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The terminal is narrower than 57 columns; the text is BProc's, typo included.
    #[error("Window to small.")]
    WindowTooSmall,
}

/// The terminal width bpstat formats for: that of stdout if it is a terminal, else 80.
pub fn terminal_cols() -> usize {
    terminal_size::terminal_size_of(std::io::stdout())
        .map_or(DEFAULT_COLS, |(terminal_size::Width(w), _)| usize::from(w))
}

/// Whether two entries share a compact row: same state, owner, group and mode.
fn same_conf(a: &NodeStatus, b: &NodeStatus) -> bool {
    a.state == b.state && a.uid == b.uid && a.gid == b.gid && a.mode == b.mode
}

/// Compact table for terminal width `cols` (bpstat uses TIOCGWINSZ or 80).
///
/// The Node(s) column is `cols - 46` wide and must be at least 11. Rows group runs of
/// consecutive entries (in the given order) with the same state, owner, group and mode; a row
/// lists their numbers comma-separated, with runs of consecutive numbers as `a-b`, and is cut
/// before the first entry that would make the list longer than the column, the rest starting
/// a new row.
///
/// One deliberate difference: when the very first entry of a row is a range too long for the
/// column (only possible with numbers of seven or more digits), BProc empties the row and then
/// loops forever; here the row holds the first number alone and the next row continues the run.
pub fn compact(
    nodes: &[NodeStatus],
    cols: usize,
    names: &dyn Names,
) -> Result<String, FormatError> {
    let width = cols
        .checked_sub(FIXED_COLUMNS)
        .filter(|&w| w >= MIN_NODES_WIDTH)
        .ok_or(FormatError::WindowTooSmall)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<width$} {:<STATUS_WIDTH$} {:<MODE_WIDTH$} {:<USER_WIDTH$} {:<USER_WIDTH$}",
        "Node(s)", "Status", "Mode", "User", "Group"
    );
    let mut i = 0;
    while i < nodes.len() {
        let (list, next) = compact_row(nodes, i, width);
        let first = &nodes[i];
        let _ = writeln!(
            out,
            "{:<width$.width$} {:<STATUS_WIDTH$.STATUS_WIDTH$} {:<MODE_WIDTH$.MODE_WIDTH$} \
             {:<USER_WIDTH$.USER_WIDTH$} {:<USER_WIDTH$.USER_WIDTH$}",
            list,
            first.state,
            mode_string(first.mode),
            names.user(first.uid),
            names.group(first.gid),
        );
        i = next;
    }
    Ok(out)
}

/// Builds the node list of the row starting at `start`, entry by entry as BProc's
/// `print_nodes_compact` does, and returns it with the index where the next row starts.
fn compact_row(nodes: &[NodeStatus], start: usize, width: usize) -> (String, usize) {
    let mut list = String::new();
    let mut j = start;
    while j < nodes.len() && same_conf(&nodes[start], &nodes[j]) {
        let before = list.len();
        if j > start {
            list.push(',');
        }
        let _ = write!(list, "{}", nodes[j].node);
        if list.len() > width {
            list.truncate(before);
            break;
        }
        // The longest run of same-row entries numbered consecutively from j.
        let mut last = j;
        while last + 1 < nodes.len()
            && same_conf(&nodes[j], &nodes[last + 1])
            && nodes[last].node.checked_add(1) == Some(nodes[last + 1].node)
        {
            last += 1;
        }
        if last > j {
            let _ = write!(list, "-{}", nodes[last].node);
            if list.len() > width {
                list.truncate(before);
                break;
            }
            j = last;
        }
        j += 1;
    }
    if j == start {
        // The first entry's range did not fit; a lone number always does (≤ 11 characters).
        list = nodes[start].node.to_string();
        j = start + 1;
    }
    (list, j)
}

/// The address bpstat prints: the node's, or 0.0.0.0 for a down node or one without address.
fn shown_addr(n: &NodeStatus) -> Ipv4Addr {
    match n.addr {
        Some(a) if n.state != "down" => a,
        _ => Ipv4Addr::UNSPECIFIED,
    }
}

/// Long listing (`-l`): a header, then `"%4d %-15s %-12s %s\t%-10.10s %-10.10s\n"` per node
/// (number, address or 0.0.0.0, state, mode string, a TAB, user, group).
pub fn long(nodes: &[NodeStatus], names: &dyn Names) -> String {
    let mut out =
        String::from("Node Address         Status       Mode          User       Group\n");
    for n in nodes {
        let _ = writeln!(
            out,
            "{:4} {:<15} {:<12} {}\t{:<10.10} {:<10.10}",
            n.node,
            shown_addr(n).to_string(),
            n.state,
            mode_string(n.mode),
            names.user(n.uid),
            names.group(n.gid),
        );
    }
    out
}

/// `-a`: one dotted quad per line; a down node, or one without address, shows 0.0.0.0.
pub fn addresses(nodes: &[NodeStatus]) -> String {
    nodes.iter().map(|n| format!("{}\n", shown_addr(n))).collect()
}

/// `-s`: one state per line.
pub fn statuses(nodes: &[NodeStatus]) -> String {
    nodes.iter().map(|n| format!("{}\n", n.state)).collect()
}

/// `-n`: one node number per line (`"%d\n"`).
pub fn numbers(nodes: &[NodeStatus]) -> String {
    nodes.iter().map(|n| format!("{}\n", n.node)).collect()
}

/// `-t`: the number of selected nodes and a newline.
pub fn total(nodes: &[NodeStatus]) -> String {
    format!("{}\n", nodes.len())
}

/// A pretty-printed, newline-terminated JSON array with one object per node: `node`, `state`,
/// `mode` (octal string such as `"0111"`), `user`, `group`, `uid`, `gid`, `addr` (dotted quad
/// or null) and `info` (null, or `cpus`, `mem_total`, `mem_free`, `load` as three load
/// averages, `uptime`, `kernel`, `hostname`, `arch`, `diskless`, `staged_bytes`).
pub fn json(nodes: &[NodeStatus], names: &dyn Names) -> String {
    let rows: Vec<NodeView> =
        nodes.iter().map(|n| NodeView::new(n, names.user(n.uid), names.group(n.gid))).collect();
    // Serializing plain structs of strings and numbers cannot fail.
    let mut text = serde_json::to_string_pretty(&rows).unwrap_or_else(|_| "[]".to_owned());
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use bproc_proto::NodeInfo;

    use super::*;

    /// uid/gid 0 are root, 1000 is alice/users, everything else unnamed.
    struct FakeNames;

    impl Names for FakeNames {
        fn user(&self, uid: u32) -> String {
            match uid {
                0 => "root".into(),
                1000 => "alice".into(),
                _ => format!("#{uid}"),
            }
        }
        fn group(&self, gid: u32) -> String {
            match gid {
                0 => "root".into(),
                100 => "users".into(),
                _ => format!("#{gid}"),
            }
        }
    }

    fn node(n: i32, state: &str, mode: u32, uid: u32, gid: u32) -> NodeStatus {
        NodeStatus { node: n, state: state.into(), mode, uid, gid, ..Default::default() }
    }

    /// The cluster of the spec's compact example, in number order.
    fn example() -> Vec<NodeStatus> {
        (0..9)
            .map(|n| match n {
                4 => node(n, "down", 0, 0, 0),
                6 => node(n, "boot", 0o100, 0, 0),
                7 | 8 => node(n, "up", 0o100, 1000, 100),
                _ => node(n, "up", 0o111, 0, 0),
            })
            .collect()
    }

    fn order(nodes: &[NodeStatus]) -> Vec<i32> {
        nodes.iter().map(|n| n.node).collect()
    }

    #[test]
    fn spec_compact_example() {
        let mut nodes = example();
        sort_nodes(&mut nodes, Sort::Default, false, true);
        let text = compact(&nodes, 80, &FakeNames).unwrap();
        // Every row keeps its trailing blanks, as printf pads them.
        let expected = concat!(
            "Node(s)                            Status          Mode       User     Group   \n",
            "6                                  boot            ---x------ root     root    \n",
            "4                                  down            ---------- root     root    \n",
            "0-3,5                              up              ---x--x--x root     root    \n",
            "7-8                                up              ---x------ alice    users   \n",
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn compact_cuts_rows_at_narrow_width() {
        // cols 57 → Node(s) column 11 wide.
        let nodes: Vec<_> = (0..7).map(|i| node(i * 2, "up", 0o111, 0, 0)).collect();
        let text = compact(&nodes, 57, &FakeNames).unwrap();
        let rows: Vec<&str> = text.lines().collect();
        assert_eq!(rows[0], "Node(s)     Status          Mode       User     Group   ");
        assert_eq!(rows[1], "0,2,4,6,8   up              ---x--x--x root     root    ");
        assert_eq!(rows[2], "10,12       up              ---x--x--x root     root    ");
        assert_eq!(rows.len(), 3);
    }

    #[test]
    fn compact_cut_inside_a_range() {
        // "0,2,4,6" fits in 11; adding ",8" (9 chars) fits, but ",8-10" (12) does not, so the
        // row ends before 8 and the next row restarts the run at 8.
        let mut nodes: Vec<_> = [0, 2, 4, 6].iter().map(|&i| node(i, "up", 0o111, 0, 0)).collect();
        nodes.extend((8..=10).map(|i| node(i, "up", 0o111, 0, 0)));
        let text = compact(&nodes, 57, &FakeNames).unwrap();
        let lists: Vec<&str> = text.lines().skip(1).map(|l| l.split(' ').next().unwrap()).collect();
        assert_eq!(lists, ["0,2,4,6", "8-10"]);
    }

    #[test]
    fn compact_exact_fit_and_wide_numbers() {
        // Exactly 11 characters fits; one more does not.
        let nodes: Vec<_> = [10, 12, 14, 16, 18].iter().map(|&i| node(i, "up", 0, 0, 0)).collect();
        assert_eq!(compact_row(&nodes, 0, 11), ("10,12,14,16".to_owned(), 4));
        assert_eq!(compact_row(&nodes, 0, 10), ("10,12,14".to_owned(), 3));
        assert_eq!(compact_row(&nodes, 3, 11), ("16,18".to_owned(), 5));
        let text = compact(&nodes, 57, &FakeNames).unwrap();
        assert!(text.lines().nth(1).unwrap().starts_with("10,12,14,16 up "));
        // A first range longer than the column: the first number alone, then the rest.
        let big: Vec<_> = (1_000_000..1_000_003).map(|i| node(i, "up", 0, 0, 0)).collect();
        assert_eq!(compact_row(&big, 0, 11), ("1000000".to_owned(), 1));
        assert_eq!(compact_row(&big, 1, 15), ("1000001-1000002".to_owned(), 3));
    }

    #[test]
    fn compact_groups_only_adjacent_entries() {
        // Keep order: a differing entry in between splits the group.
        let nodes = vec![node(0, "up", 0, 0, 0), node(1, "down", 0, 0, 0), node(2, "up", 0, 0, 0)];
        let text = compact(&nodes, 80, &FakeNames).unwrap();
        let lists: Vec<&str> = text.lines().skip(1).map(|l| l.split(' ').next().unwrap()).collect();
        assert_eq!(lists, ["0", "1", "2"]);
        // Descending numbers are not ranges.
        let nodes = vec![node(3, "up", 0, 0, 0), node(2, "up", 0, 0, 0), node(1, "up", 0, 0, 0)];
        let text = compact(&nodes, 80, &FakeNames).unwrap();
        assert!(text.lines().nth(1).unwrap().starts_with("3,2,1 "));
    }

    #[test]
    fn compact_truncates_fields_and_names_unknown_ids() {
        let nodes = vec![node(-1, "averyveryverylongstate", 0o111, 4242, 4343)];
        let text = compact(&nodes, 60, &FakeNames).unwrap();
        assert_eq!(
            text.lines().nth(1).unwrap(),
            "-1             averyveryverylo ---x--x--x #4242    #4343   "
        );
    }

    #[test]
    fn window_too_small() {
        let nodes = example();
        assert!(matches!(compact(&nodes, 56, &FakeNames), Err(FormatError::WindowTooSmall)));
        assert!(matches!(compact(&nodes, 10, &FakeNames), Err(FormatError::WindowTooSmall)));
        assert!(matches!(compact(&nodes, 0, &FakeNames), Err(FormatError::WindowTooSmall)));
        assert!(compact(&nodes, 57, &FakeNames).is_ok());
        assert_eq!(FormatError::WindowTooSmall.to_string(), "Window to small.");
    }

    #[test]
    fn compact_empty_is_header_only() {
        let text = compact(&[], 80, &FakeNames).unwrap();
        assert_eq!(text.lines().count(), 1);
    }

    #[test]
    fn long_example() {
        let mut n = node(0, "up", 0o111, 0, 0);
        n.addr = Some(Ipv4Addr::new(10, 0, 0, 10));
        let down = node(4, "down", 0, 1000, 100);
        let master = bproc_client::nodespec::master_entry();
        let text = long(&[n, down, master], &FakeNames);
        assert_eq!(
            text,
            "Node Address         Status       Mode          User       Group\n\
             \x20  0 10.0.0.10       up           ---x--x--x\troot       root      \n\
             \x20  4 0.0.0.0         down         ----------\talice      users     \n\
             \x20 -1 0.0.0.0         up           ---x--x--x\troot       root      \n"
        );
    }

    #[test]
    fn long_truncates_names_to_ten() {
        struct Long;
        impl Names for Long {
            fn user(&self, _: u32) -> String {
                "abcdefghijklmno".into()
            }
            fn group(&self, _: u32) -> String {
                "g".into()
            }
        }
        let text = long(&[node(12345, "error", 0o010, 0, 0)], &Long);
        assert_eq!(
            text.lines().nth(1).unwrap(),
            "12345 0.0.0.0         error        ------x---\tabcdefghij g         "
        );
    }

    #[test]
    fn sorting_rules() {
        let base = vec![
            node(5, "up", 0, 0, 0),
            node(1, "down", 0, 0, 0),
            node(3, "up", 0, 0, 0),
            node(0, "boot", 0, 0, 0),
            node(2, "down", 0, 0, 0),
        ];
        let sorted = |sort, reverse, compact| {
            let mut v = base.clone();
            sort_nodes(&mut v, sort, reverse, compact);
            order(&v)
        };
        // Default: status for compact, number otherwise.
        assert_eq!(sorted(Sort::Default, false, true), [0, 1, 2, 3, 5]);
        assert_eq!(sorted(Sort::Default, false, false), [0, 1, 2, 3, 5]);
        assert_eq!(sorted(Sort::Status, false, false), [0, 1, 2, 3, 5]);
        // -S -R: states reversed, ties still ascending.
        assert_eq!(sorted(Sort::Status, true, false), [3, 5, 1, 2, 0]);
        assert_eq!(sorted(Sort::Default, true, true), [3, 5, 1, 2, 0]);
        // -N and -N -R.
        assert_eq!(sorted(Sort::Number, false, true), [0, 1, 2, 3, 5]);
        assert_eq!(sorted(Sort::Number, true, true), [5, 3, 2, 1, 0]);
        assert_eq!(sorted(Sort::Default, true, false), [5, 3, 2, 1, 0]);
        // -O and -O -R.
        assert_eq!(sorted(Sort::Keep, false, true), [5, 1, 3, 0, 2]);
        assert_eq!(sorted(Sort::Keep, true, true), [2, 0, 3, 1, 5]);
    }

    #[test]
    fn status_sort_is_strcmp() {
        // Byte order: upper case before lower case, and a prefix first.
        let mut v = vec![node(0, "up", 0, 0, 0), node(1, "Up", 0, 0, 0), node(2, "u", 0, 0, 0)];
        sort_nodes(&mut v, Sort::Status, false, true);
        assert_eq!(order(&v), [1, 2, 0]);
    }

    #[test]
    fn mode_strings() {
        assert_eq!(mode_string(0o111), "---x--x--x");
        assert_eq!(mode_string(0o100), "---x------");
        assert_eq!(mode_string(0), "----------");
        assert_eq!(mode_string(0o010), "------x---");
        assert_eq!(mode_string(0o001), "---------x");
        assert_eq!(mode_string(0o777), "---x--x--x");
    }

    #[test]
    fn simple_lists() {
        let mut up = node(2, "up", 0, 0, 0);
        up.addr = Some(Ipv4Addr::new(192, 168, 1, 2));
        let mut down = node(10, "down", 0, 0, 0);
        down.addr = Some(Ipv4Addr::new(192, 168, 1, 10));
        let boot = node(3, "boot", 0, 0, 0);
        let nodes = [up, down, boot];
        assert_eq!(addresses(&nodes), "192.168.1.2\n0.0.0.0\n0.0.0.0\n");
        assert_eq!(statuses(&nodes), "up\ndown\nboot\n");
        assert_eq!(numbers(&nodes), "2\n10\n3\n");
        assert_eq!(total(&nodes), "3\n");
        assert_eq!(total(&[]), "0\n");
        assert_eq!(numbers(&[]), "");
    }

    #[test]
    fn json_output() {
        let mut n = node(0, "up", 0o111, 1000, 100);
        n.addr = Some(Ipv4Addr::new(10, 0, 0, 10));
        n.info = Some(NodeInfo {
            cpus: 4,
            mem_total: 8 << 30,
            mem_free: 1 << 30,
            load: [150, 25, 0],
            uptime: 3600,
            kernel: "6.1.0".into(),
            hostname: "n0".into(),
            arch: "x86_64".into(),
            diskless: true,
            staged_bytes: 1234,
        });
        let text = json(&[n, node(1, "down", 0, 0, 0)], &FakeNames);
        assert!(text.ends_with("]\n"));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v,
            serde_json::json!([
                {
                    "node": 0, "state": "up", "mode": "0111", "user": "alice", "group": "users",
                    "uid": 1000, "gid": 100, "addr": "10.0.0.10",
                    "info": {
                        "cpus": 4, "mem_total": 8u64 << 30, "mem_free": 1u64 << 30,
                        "load": [1.5, 0.25, 0.0], "uptime": 3600, "kernel": "6.1.0",
                        "hostname": "n0", "arch": "x86_64", "diskless": true, "staged_bytes": 1234
                    }
                },
                {
                    "node": 1, "state": "down", "mode": "0000", "user": "root", "group": "root",
                    "uid": 0, "gid": 0, "addr": null, "info": null
                }
            ])
        );
        // Fields appear in the documented order.
        let first = text.find("\"node\"").unwrap();
        assert!(first < text.find("\"state\"").unwrap());
        assert!(text.find("\"addr\"").unwrap() < text.find("\"info\"").unwrap());
        assert_eq!(json(&[], &FakeNames), "[]\n");
    }

    #[test]
    fn system_names_fall_back_to_numbers() {
        let names = SystemNames::new();
        assert_eq!(names.user(0), names.user(0));
        // An id no system assigns.
        assert_eq!(names.user(4_000_000_123), "#4000000123");
        assert_eq!(names.group(4_000_000_123), "#4000000123");
    }
}
