//! `docs/protocol.md` lists every message of the table with its number and name, and no
//! message the table lacks, so the hand-written field descriptions cannot drift silently.

use std::collections::BTreeMap;

/// The `| NUMBER | Name |` rows of the protocol document's message table.
fn documented() -> BTreeMap<u16, String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/protocol.md");
    let text = std::fs::read_to_string(path).expect("read docs/protocol.md");
    let mut rows = BTreeMap::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 3 || !cells[0].is_empty() {
            continue;
        }
        let Ok(num) = cells[1].parse::<u16>() else { continue };
        assert!(rows.insert(num, cells[2].to_string()).is_none(), "number {num} listed twice");
    }
    rows
}

#[test]
fn every_message_is_documented_with_its_number() {
    let mut docs = documented();
    for &(num, name) in bproc_proto::MESSAGE_TYPES {
        let listed = docs.remove(&num);
        assert_eq!(listed.as_deref(), Some(name), "message {num} in docs/protocol.md");
    }
    // What is left may only be retired numbers.
    for (num, row) in docs {
        assert!(row.starts_with("(retired"), "docs/protocol.md lists {num} {row}, not a message");
    }
}
