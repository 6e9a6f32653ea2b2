#!/usr/bin/env bash
# Installs bproc under a prefix, as `make install` would: the daemons (bpmaster, bpslave,
# beoserv) and beoboot in sbin, the other programs in bin, libbproc (shared library with soname libbproc.so.4, static
# library), the C headers, a pkg-config file, the man pages and systemd units for the daemons.
#
#   scripts/install.sh [PREFIX]          # default /usr/local
#   DESTDIR=/tmp/stage scripts/install.sh /usr   # staged install for packaging
#
# The units go to PREFIX/lib/systemd/system (which systemd reads for /usr and /usr/local), or
# to $SYSTEMDUNITDIR; they run the daemons from PREFIX/sbin. Enable them with
# `systemctl daemon-reload && systemctl enable --now bpmaster` (or bpslave, on the nodes).
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
UNITDIR=${DESTDIR:-}${SYSTEMDUNITDIR:-$PREFIX/lib/systemd/system}
install -d "$DEST/bin" "$DEST/sbin" "$DEST/lib/pkgconfig" "$DEST/include/sys" \
    "$DEST/share/man/man1" "$DEST/share/man/man3" "$DEST/share/man/man8" "$UNITDIR"
# bpmaster finds bpghost in ../bin, and bpcluster the daemons in ../sbin.
for p in bpmaster bpslave beoserv beoboot; do
    install -m 755 "$R/$p" "$DEST/sbin/$p"
done
for p in bpghost bpsh brsh bpcp bpstat bpctl bplib bpcluster; do
    install -m 755 "$R/$p" "$DEST/bin/$p"
done
for u in bpmaster bpslave beoserv; do
    sed "s|@SBINDIR@|$PREFIX/sbin|g" "systemd/$u.service.in" >"$UNITDIR/$u.service"
    chmod 644 "$UNITDIR/$u.service"
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
