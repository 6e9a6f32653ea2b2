//! The fuzz seeds (`fuzz/seeds/`, made by `fuzz/examples/gen_seeds.rs`) are frames of this
//! protocol version that decode: after a version bump or a message change they would all be
//! refused at the header and no longer lead the fuzzer into the message decoders.

#[test]
fn fuzz_seed_frames_decode() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds");
    let mut frames = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&path).unwrap();
        // Regression inputs are kept as found; streams and images are other formats.
        if name.starts_with("regress-") || !bytes.starts_with(&bproc_proto::MAGIC) {
            continue;
        }
        let decoded = bproc_proto::decode(&bytes);
        assert!(decoded.is_ok(), "seed {name}: {decoded:?}");
        frames += 1;
    }
    assert!(frames > 50, "only {frames} frame seeds in {}", dir.display());
}
