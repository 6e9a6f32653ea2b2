#!/usr/bin/env bash
# Installs bproc under a prefix, as `make install` would: the programs, libbproc (shared
# library with soname libbproc.so.4, static library), the C headers, a pkg-config file and
# the man pages.
#
#   scripts/install.sh [PREFIX]          # default /usr/local
#   DESTDIR=/tmp/stage scripts/install.sh /usr   # staged install for packaging
#
# Builds in release mode first (PROFILE=debug installs the debug build, for tests).
# Afterwards: cc prog.c $(pkg-config --cflags --libs bproc)
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${1:-/usr/local}
DEST=${DESTDIR:-}$PREFIX
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
PROFILE=${PROFILE:-release}
case "$PROFILE" in
release) cargo build --release --quiet -p bproc-bins -p bproc-capi ;;
debug) cargo build --quiet -p bproc-bins -p bproc-capi ;;
*) echo "install.sh: PROFILE must be release or debug" >&2; exit 2 ;;
esac
R=target/$PROFILE
install -d "$DEST/bin" "$DEST/lib/pkgconfig" "$DEST/include/sys" \
    "$DEST/share/man/man1" "$DEST/share/man/man3" "$DEST/share/man/man8"
for p in bpmaster bpslave bpghost bpsh brsh bpcp bpstat bpctl bplib bpcluster; do
    install -m 755 "$R/$p" "$DEST/bin/$p"
done
install -m 755 "$R/libbproc.so" "$DEST/lib/libbproc.so.4.0.0"
ln -sf libbproc.so.4.0.0 "$DEST/lib/libbproc.so.4"
ln -sf libbproc.so.4 "$DEST/lib/libbproc.so"
install -m 644 "$R/libbproc.a" "$DEST/lib/libbproc.a"
for m in man/*.[138]; do
    install -m 644 "$m" "$DEST/share/man/man${m##*.}/"
done
install -m 644 crates/bproc-capi/include/sys/bproc.h crates/bproc-capi/include/sys/bproc_common.h \
    "$DEST/include/sys/"
cat >"$DEST/lib/pkgconfig/bproc.pc" <<EOPC
prefix=$PREFIX
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: bproc
Description: BProc's C API (libbproc) for bproc clusters
Version: $VERSION
Libs: -L\${libdir} -lbproc
Libs.private: -lpthread -ldl -lm -lrt
Cflags: -I\${includedir}
EOPC
echo "installed bproc $VERSION under $DEST"
