//! Golden bytes: the samples of every message (`bproc_proto::samples`), encoded and compared
//! with the committed hex in `tests/golden/`, and the committed bytes decoded back to the value. A change to the wire shows in review as a change
//! to these files; a new message without a fixture fails `every_message_has_a_fixture`.
//!
//! After a deliberate change to the wire (and a bump of `VERSION`), rewrite the fixtures with
//! `BPROC_BLESS=1 cargo test -p bproc-proto --test golden`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use bproc_proto::samples::all;
use bproc_proto::{decode_body, encode, Header, Message, HEADER_LEN};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn file_name(suffix: &str, msg: &Message) -> String {
    format!("{}-{}{suffix}.hex", msg.msg_type(), msg.name())
}

/// Hex, 32 bytes a line, so that a change shows as a few changed lines.
fn to_hex(bytes: &[u8]) -> String {
    bytes.chunks(32).map(|c| hex::encode(c) + "\n").collect()
}

fn from_hex(text: &str) -> Vec<u8> {
    let joined: String = text.split_whitespace().collect();
    hex::decode(joined).expect("fixture is hex")
}

fn header(msg_type: u16, len: usize) -> Header {
    Header { msg_type, id: 0, len: len as u32 }
}

#[test]
fn every_message_matches_its_fixture() {
    let bless = std::env::var_os("BPROC_BLESS").is_some();
    let mut failures = Vec::new();
    for (suffix, msg) in all() {
        let path = dir().join(file_name(suffix, &msg));
        let body = encode(0, &msg)[HEADER_LEN..].to_vec();
        if bless {
            std::fs::create_dir_all(dir()).unwrap();
            std::fs::write(&path, to_hex(&body)).unwrap();
            continue;
        }
        let fixture = match std::fs::read_to_string(&path) {
            Result::Ok(t) => from_hex(&t),
            Err(e) => panic!("{}: {e} (write it with BPROC_BLESS=1)", path.display()),
        };
        if fixture != body {
            failures.push(format!("{}: encodes differently", path.display()));
        }
        match decode_body(&header(msg.msg_type(), fixture.len()), &fixture) {
            Result::Ok(back) if back == msg => {}
            other => failures.push(format!("{}: decodes to {other:?}", path.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The fixtures are exactly the samples' (none left over from a renamed message), and every
/// message number the decoder knows has one: a number is known when an empty body does not
/// decode to `Unknown`.
#[test]
fn every_message_has_a_fixture() {
    let sampled: BTreeSet<u16> = all().iter().map(|(_, m)| m.msg_type()).collect();
    let known: BTreeSet<u16> = (0..=u16::MAX)
        .filter(|&n| {
            !matches!(decode_body(&header(n, 0), &[]), Result::Ok(Message::Unknown { .. }))
        })
        .collect();
    let missing: Vec<_> = known.difference(&sampled).collect();
    assert!(missing.is_empty(), "message numbers without a golden sample: {missing:?}");
    let names: BTreeSet<String> = all().iter().map(|(s, m)| file_name(s, m)).collect();
    assert_eq!(names.len(), all().len(), "two samples share a fixture name");
    if std::env::var_os("BPROC_BLESS").is_some() {
        return;
    }
    for e in std::fs::read_dir(dir()).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(names.contains(&name), "tests/golden/{name} belongs to no sample");
    }
}
