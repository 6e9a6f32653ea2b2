#!/usr/bin/env bash
# Builds the Debian package target/debian/bproc_VERSION_amd64.deb with cargo-deb
# (`cargo install cargo-deb`): scripts/install.sh stages every file under target/debian-root
# as /usr, then cargo deb packs the assets [package.metadata.deb] in crates/bproc-bins lists
# from there, with the maintainer scripts in packaging/debian/.
#
#   scripts/deb.sh                 # release build
#   PROFILE=debug scripts/deb.sh   # the debug build, stripped (what the package test uses)
#
# Programs go to /usr/bin, daemons to /usr/sbin, libbproc.so.4 and libnss_bproc.so.2 to
# /usr/lib/x86_64-linux-gnu, the systemd units to /usr/lib/systemd/system, man pages,
# headers, bproc.pc, shell completions, and an example configuration and node_up to
# /usr/share/doc/bproc/examples/. Nothing goes to /etc: the configuration is the admin's.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || { echo "deb.sh: cargo-deb missing: cargo install cargo-deb" >&2; exit 2; }
ROOT=target/debian-root
rm -rf "$ROOT" target/debian/bproc_*.deb
DESTDIR=$ROOT LIBDIR=/usr/lib/x86_64-linux-gnu SYSTEMDUNITDIR=/usr/lib/systemd/system \
    scripts/install.sh /usr >/dev/null
# Packages ship without debug sections (a debug build's are hundreds of megabytes).
strip --strip-debug "$ROOT"/usr/bin/* "$ROOT"/usr/sbin/* "$ROOT"/usr/lib/x86_64-linux-gnu/*.so* \
    "$ROOT"/usr/lib/x86_64-linux-gnu/*.a
cargo deb -p bproc-bins --no-build --no-strip --fast --quiet
