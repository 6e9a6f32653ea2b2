#!/usr/bin/env bash
# Installs bproc under a prefix, as `make install` would: the daemons (bpmaster, bpslave,
# beoserv) and beoboot in sbin, the other programs in bin, libbproc (shared library with soname
# libbproc.so.4, static library), the C headers, a pkg-config file, the man pages and systemd
# units for the daemons, the NSS module libnss_bproc.so.2 (node names for every program; add
# `bproc` to the hosts line of /etc/nsswitch.conf, and run ldconfig for a prefix outside the
# linker's default paths) and the shell completions (bash, zsh, fish).
#
#   scripts/install.sh [PREFIX]          # default /usr/local
#   DESTDIR=/tmp/stage scripts/install.sh /usr   # staged install for packaging
#
# The units go to PREFIX/lib/systemd/system (which systemd reads for /usr and /usr/local), or
# to $SYSTEMDUNITDIR; they run the daemons from PREFIX/sbin. Enable them with
# `systemctl daemon-reload && systemctl enable --now bpmaster` (or bpslave, on the nodes).
# Libraries go to PREFIX/lib, or $LIBDIR (a Debian package: /usr/lib/x86_64-linux-gnu).
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
release) cargo build --release --quiet -p bproc-bins -p bproc-capi -p bproc-nss ;;
debug) cargo build --quiet -p bproc-bins -p bproc-capi -p bproc-nss ;;
*) echo "install.sh: PROFILE must be release or debug" >&2; exit 2 ;;
esac
R=target/$PROFILE
UNITDIR=${DESTDIR:-}${SYSTEMDUNITDIR:-$PREFIX/lib/systemd/system}
LIBDIR=${LIBDIR:-$PREFIX/lib}
DESTLIB=${DESTDIR:-}$LIBDIR
install -d "$DEST/bin" "$DEST/sbin" "$DESTLIB/pkgconfig" "$DEST/include/sys" \
    "$DEST/share/man/man1" "$DEST/share/man/man3" "$DEST/share/man/man5" "$DEST/share/man/man8" \
    "$UNITDIR" "$DEST/share/bash-completion/completions" "$DEST/share/zsh/vendor-completions" \
    "$DEST/share/fish/vendor_completions.d"
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
install -m 755 "$R/libbproc.so" "$DESTLIB/libbproc.so.4.0.0"
ln -sf libbproc.so.4.0.0 "$DESTLIB/libbproc.so.4"
ln -sf libbproc.so.4 "$DESTLIB/libbproc.so"
install -m 644 "$R/libbproc.a" "$DESTLIB/libbproc.a"
install -m 644 "$R/libnss_bproc.so" "$DESTLIB/libnss_bproc.so.2"
# bash-completion loads a file by the command's name: one script, linked under each name.
install -m 644 completions/bash/bproc "$DEST/share/bash-completion/completions/bpsh"
for p in bpstat bpctl bpcp bpcluster brsh bplib bpmaster bpslave; do
    ln -sf bpsh "$DEST/share/bash-completion/completions/$p"
done
install -m 644 completions/zsh/_bproc "$DEST/share/zsh/vendor-completions/_bproc"
install -m 644 completions/fish/bproc.fish "$DEST/share/fish/vendor_completions.d/bpsh.fish"
for p in bpstat bpctl bpcp bpcluster; do
    ln -sf bpsh.fish "$DEST/share/fish/vendor_completions.d/$p.fish"
done
for m in man/*.[1358]; do
    install -m 644 "$m" "$DEST/share/man/man${m##*.}/"
done
install -m 644 crates/bproc-capi/include/sys/bproc.h crates/bproc-capi/include/sys/bproc_common.h \
    "$DEST/include/sys/"
cat >"$DESTLIB/pkgconfig/bproc.pc" <<EOPC
prefix=$PREFIX
libdir=$LIBDIR
includedir=\${prefix}/include

Name: bproc
Description: BProc's C API (libbproc) for bproc clusters
Version: $VERSION
Libs: -L\${libdir} -lbproc
Libs.private: -lpthread -ldl -lm -lrt
Cflags: -I\${includedir}
EOPC
echo "installed bproc $VERSION under $DEST"
