//! Golden bytes of an image's preamble and header: a header using every field (two of each
//! list, every region source) encodes to the committed hex in `tests/golden/header.hex`, and
//! those bytes decode back to it. After a deliberate format change (and a bump of `VERSION`),
//! rewrite the fixture with `BPROC_BLESS=1 cargo test -p bproc-image --test golden`.

use std::path::Path;

use bproc_image::{
    prot, Header, Machine, MmFields, OpenFile, Preamble, Region, SigAction, Source, Special,
    Thread, PREAMBLE_LEN, REGS,
};

fn thread(tid: i32, fill: u8) -> Thread {
    Thread {
        tid,
        regs: (0..REGS as u64).map(|r| r * 0x1000 + u64::from(fill)).collect(),
        xstate: vec![fill; 40],
        sigmask: 1 << 9,
        altstack: (0x7f00_0001_0000, 2, 8192),
        rseq: (0x7ffd_0000_1000, 32, 0x5305_3053),
        robust_list: (0x7ffd_0000_2000, 24),
        tid_address: 0x7ffd_0000_2010,
    }
}

fn sample() -> Header {
    Header {
        machine: Machine {
            arch: "x86_64".into(),
            kernel: "6.18.0".into(),
            vdso_hash: [1; 32],
            cpu_hash: [2; 32],
        },
        pid: 4242,
        comm: "app".into(),
        exe: "/usr/bin/app".into(),
        cwd: "/tmp".into(),
        umask: 0o022,
        rsp: 0x7ffd_0000_1000,
        rip: 0x5555_0000_1234,
        fs_base: 0x7f00_0000_0740,
        gs_base: 0x7f00_0000_0800,
        sigmask: 1 << 11,
        sigactions: vec![
            SigAction { signal: 10, handler: 0x5555_0000_2000, flags: 4, restorer: 7, mask: 1 },
            SigAction { signal: 64, handler: 1, flags: 0, restorer: 0, mask: u64::MAX },
        ],
        altstack: (0x7f00_0002_0000, 0, 65536),
        rseq: (0x7f00_0000_0ea0, 32, 0x5305_3053),
        robust_list: (0x7f00_0000_0a20, 24),
        tid_address: 0x7f00_0000_0a10,
        personality: 0x0040_0000,
        mailbox: (0x5555_0000_3000, 4096),
        mm: MmFields {
            start_code: 1,
            end_code: 2,
            start_data: 3,
            end_data: 4,
            start_brk: 5,
            brk: 6,
            start_stack: 7,
            arg_start: 8,
            arg_end: 9,
            env_start: 10,
            env_end: 11,
        },
        auxv: vec![(6, 4096), (33, 0x7fff_0000_0000)],
        rlimits: vec![(7, 1024, 4096), (3, 8 << 20, u64::MAX)],
        specials: vec![
            Special { name: "[vdso]".into(), start: 0x7fff_0000_0000, end: 0x7fff_0000_2000 },
            Special { name: "[vvar]".into(), start: 0x7fff_0000_2000, end: 0x7fff_0000_6000 },
        ],
        files: vec![
            OpenFile { fd: 3, path: "/tmp/log".into(), flags: 0o2001, offset: 77 },
            OpenFile { fd: 9, path: "/etc/hosts".into(), flags: 0, offset: 0 },
        ],
        regions: vec![
            Region {
                start: 0x5555_0000_0000,
                end: 0x5555_0000_2000,
                prot: prot::READ | prot::EXEC,
                stack: false,
                source: Source::File {
                    path: "/usr/bin/app".into(),
                    offset: 0x1000,
                    size: 9000,
                    mtime: (-1_700_000_000, 5),
                },
            },
            Region {
                start: 0x5555_0000_2000,
                end: 0x5555_0000_4000,
                prot: prot::READ,
                stack: false,
                source: Source::Copied { path: "/tmp/data".into() },
            },
            Region {
                start: 0x7ffd_0000_0000,
                end: 0x7ffd_0002_0000,
                prot: prot::READ | prot::WRITE,
                stack: true,
                source: Source::Anonymous,
            },
        ],
        threads: vec![thread(43, 9), thread(44, 10)],
        tid_slot: 0x2d0,
    }
}

#[test]
fn header_matches_its_fixture() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/header.hex");
    let bytes = sample().encode();
    if std::env::var_os("BPROC_BLESS").is_some() {
        let text: String = bytes.chunks(32).map(|c| hex::encode(c) + "\n").collect();
        std::fs::write(&path, text).unwrap();
        return;
    }
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (write it with BPROC_BLESS=1)", path.display()));
    let fixture = hex::decode(text.split_whitespace().collect::<String>()).unwrap();
    assert!(fixture == bytes, "{}: the header encodes differently", path.display());
    let pre = Preamble::parse(fixture[..PREAMBLE_LEN].try_into().unwrap()).unwrap();
    assert_eq!(Header::decode(&pre, &fixture[PREAMBLE_LEN..]), Ok(sample()));
}
