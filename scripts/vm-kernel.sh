#!/usr/bin/env bash
# The guest kernel for `bpcluster up --vm` and the tests of network-booted machines: Debian's
# cloud kernel (its NIC driver, virtio, is a module, as on real hardware), from the Debian
# package registry, unpacked (not installed) into target/vm-kernel/pkg: boot/vmlinuz-RELEASE
# and lib/modules/RELEASE, where beoboot finds the modules beside the kernel.
#
#   scripts/vm-kernel.sh          # prints the kernel's path; fetches it only once
#
# VM_KERNEL_DIR overrides target/vm-kernel.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${VM_KERNEL_DIR:-target/vm-kernel}
found() { ls "$dir"/pkg/boot/vmlinuz-* 2>/dev/null | head -1; }
if [ -n "$(found)" ]; then
    found
    exit 0
fi
# The metapackage names the current kernel package (linux-image-6.1.0-NN-cloud-amd64).
current() {
    apt-cache depends linux-image-cloud-amd64 2>/dev/null |
        sed -n 's/^ *Depends: \(linux-image-[^ ]*-cloud-amd64\)$/\1/p' | head -1
}
pkg=$(current)
if [ -z "$pkg" ] && [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    pkg=$(current)
fi
if [ -z "$pkg" ]; then
    echo "vm-kernel.sh: apt-cache knows no linux-image-cloud-amd64 (a Debian system? apt-get update?)" >&2
    exit 1
fi
mkdir -p "$dir"
(cd "$dir" && apt-get download -qq -o APT::Sandbox::User=root "$pkg")
dpkg-deb -x "$dir/${pkg}"_*.deb "$dir/pkg"
rm -f "$dir/${pkg}"_*.deb
found
