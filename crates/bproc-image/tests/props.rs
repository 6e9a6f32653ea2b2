//! Property tests: every header re-encodes to itself, and no byte string makes the decoder
//! panic or over-allocate.

use bproc_image::{
    read_image, Chunk, Header, Machine, MmFields, OpenFile, Preamble, Region, SigAction, Source,
    Special, Thread, PREAMBLE_LEN, REGS,
};
use proptest::prelude::*;

fn source() -> impl Strategy<Value = Source> {
    prop_oneof![
        Just(Source::Anonymous),
        ".{0,20}".prop_map(|path| Source::Copied { path }),
        (".{0,20}", any::<u64>(), any::<u64>(), any::<i64>(), any::<u32>()).prop_map(
            |(path, offset, size, s, ns)| Source::File { path, offset, size, mtime: (s, ns) }
        ),
    ]
}

/// Sorted, page-aligned, non-overlapping regions from gaps and lengths in pages.
fn regions() -> impl Strategy<Value = Vec<Region>> {
    proptest::collection::vec((0u64..1000, 1u64..1000, 0u8..=7, any::<bool>(), source()), 0..8)
        .prop_map(|v| {
            let mut at = 0x1000u64;
            v.into_iter()
                .map(|(gap, len, prot, stack, source)| {
                    let start = at + gap * 4096;
                    at = start + len * 4096;
                    Region { start, end: at, prot, stack, source }
                })
                .collect()
        })
}

fn header() -> impl Strategy<Value = Header> {
    (
        (".{0,10}", ".{0,10}", any::<[u8; 32]>(), any::<[u8; 32]>()),
        (any::<i32>(), ".{0,10}", ".{0,10}", ".{0,10}", any::<u32>()),
        any::<[u64; 5]>(),
        proptest::collection::vec((1u8..=64, any::<[u64; 4]>()), 0..4),
        (any::<(u64, i32, u64)>(), any::<(u64, u32, u32)>(), any::<(u64, u64)>(), any::<u64>()),
        (any::<u32>(), any::<[u64; 11]>()),
        proptest::collection::vec(any::<(u64, u64)>(), 0..6),
        proptest::collection::vec(any::<(u32, u64, u64)>(), 0..4),
        (
            proptest::collection::vec((".{0,8}", 1u64..100, 1u64..10), 0..3),
            proptest::collection::vec((3i32..100, ".{0,8}", any::<i32>(), any::<u64>()), 0..3),
        ),
        regions(),
    )
        .prop_map(
            |(m, p, regs, acts, sig, (personality, mm), auxv, rlimits, (sp, files), regions)| {
                Header {
                    machine: Machine { arch: m.0, kernel: m.1, vdso_hash: m.2, cpu_hash: m.3 },
                    pid: p.0,
                    comm: p.1,
                    exe: p.2,
                    cwd: p.3,
                    umask: p.4,
                    rsp: regs[0],
                    rip: regs[1],
                    fs_base: regs[2],
                    gs_base: regs[3],
                    sigmask: regs[4],
                    sigactions: acts
                        .into_iter()
                        .map(|(signal, a)| SigAction {
                            signal,
                            handler: a[0],
                            flags: a[1],
                            restorer: a[2],
                            mask: a[3],
                        })
                        .collect(),
                    altstack: sig.0,
                    rseq: sig.1,
                    robust_list: sig.2,
                    tid_address: sig.3,
                    personality,
                    mailbox: (u64::from(personality) << 12, personality >> 20),
                    mm: MmFields {
                        start_code: mm[0],
                        end_code: mm[1],
                        start_data: mm[2],
                        end_data: mm[3],
                        start_brk: mm[4],
                        brk: mm[5],
                        start_stack: mm[6],
                        arg_start: mm[7],
                        arg_end: mm[8],
                        env_start: mm[9],
                        env_end: mm[10],
                    },
                    auxv,
                    rlimits,
                    specials: sp
                        .into_iter()
                        .map(|(name, start, len)| Special {
                            name,
                            start: start * 4096,
                            end: (start + len) * 4096,
                        })
                        .collect(),
                    files: files
                        .into_iter()
                        .map(|(fd, path, flags, offset)| OpenFile { fd, path, flags, offset })
                        .collect(),
                    regions,
                    threads: (0..personality % 3)
                        .map(|i| Thread {
                            tid: p.0.wrapping_add(i as i32),
                            regs: vec![regs[0].wrapping_add(u64::from(i)); REGS],
                            xstate: vec![i as u8; 512],
                            sigmask: regs[4],
                            altstack: sig.0,
                            rseq: sig.1,
                            robust_list: sig.2,
                            tid_address: sig.3,
                        })
                        .collect(),
                    tid_slot: personality,
                }
            },
        )
}

proptest! {
    #[test]
    fn headers_round_trip(h in header()) {
        let bytes = h.encode();
        let pre = Preamble::parse(bytes[..PREAMBLE_LEN].try_into().unwrap()).unwrap();
        let back = Header::decode(&pre, &bytes[PREAMBLE_LEN..]).unwrap();
        prop_assert_eq!(&back, &h);
        prop_assert_eq!(back.encode(), bytes);
    }

    #[test]
    fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = read_image(&mut bytes.as_slice(), |_, _, _| Ok(()));
        if bytes.len() >= 16 {
            let _ = Chunk::parse(bytes[..16].try_into().unwrap());
        }
    }

    #[test]
    fn damaged_headers_are_refused(h in header(), at in any::<usize>(), bit in 0u8..8) {
        let mut bytes = h.encode();
        let i = PREAMBLE_LEN + at % (bytes.len() - PREAMBLE_LEN).max(1);
        if i < bytes.len() {
            bytes[i] ^= 1 << bit;
            let pre = Preamble::parse(bytes[..PREAMBLE_LEN].try_into().unwrap()).unwrap();
            prop_assert!(Header::decode(&pre, &bytes[PREAMBLE_LEN..]).is_err());
        }
    }
}
