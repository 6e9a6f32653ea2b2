#!/bin/sh
# Cargo runs each rustc of this workspace's own crates through this script
# (.cargo/config.toml, build.rustc-workspace-wrapper): it links bpslave and bpsh statically,
# with the C library inside, and leaves everything else as it is.
#
# A static bpslave needs no library on a node (a network-booted node's image holds the
# daemon alone), and it maps no shared C library: on a virtual cluster a thousand slaves
# mapping libc made every other process that maps it, each rank a launch starts among them,
# pay for the kernel's longer list of libc's mappings. A static bpsh starts without the
# dynamic loader, a third of its start-up and a tenth of a one-rank launch. Neither looks up
# user or host names, for which a static C library would need the system's modules.
rustc=$1
shift
name=
kind=
prev=
for a in "$@"; do
    case $prev in
        --crate-name) name=$a ;;
        --crate-type) kind=$a ;;
    esac
    prev=$a
done
case $name in
    bpslave | bpsh)
        if [ "$kind" = bin ]; then
            exec "$rustc" "$@" -C target-feature=+crt-static
        fi
        ;;
esac
exec "$rustc" "$@"
