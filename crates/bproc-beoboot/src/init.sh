#!/bin/sh
# /init of a bproc node booted by beoboot (busybox sh, pid 1).
#
# Loads the NIC drivers listed in /etc/beoboot/modules (in dependency order), configures the
# first interface that gets a DHCP lease (or, with bproc.ip=ADDR/BITS on the kernel command
# line, that address on bproc.iface, default the first interface), and runs bpslave against
# the master: the kernel command line's bproc.master=IP[:PORT], else the DHCP server (port
# bproc.port, default 2223). The node's name is the host name DHCP gives (the boot server says nN), else
# n<bproc.node>. bpslave runs diskless: its processes see an empty root in RAM. When it
# exits (`bpctl -s down`, a lost master without -r) the node reboots, as under Beoboot.
/bin/busybox mkdir -p /proc /sys /dev /run /tmp /bin /sbin /usr/bin /usr/sbin
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts

log() { echo "beoboot: $*"; }

master= port=2223 node= verbose= keyurl= static= iface=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
    bproc.ip=*) static="${arg#bproc.ip=}" ;;
    bproc.iface=*) iface="${arg#bproc.iface=}" ;;
    bproc.master=*) master="${arg#bproc.master=}" ;;
    bproc.port=*) port="${arg#bproc.port=}" ;;
    bproc.node=*) node="${arg#bproc.node=}" ;;
    bproc.verbose=*) verbose=-v ;;
    bproc.keyurl=*) keyurl="${arg#bproc.keyurl=}" ;;
    esac
done

for m in $(cat /etc/beoboot/modules); do
    insmod "/lib/modules/$m.ko" || log "cannot load module $m"
done
ip link set lo up

first_iface() {
    for dev in /sys/class/net/*; do
        [ "${dev##*/}" = lo ] || { echo "${dev##*/}"; return; }
    done
}

# A static address from the kernel command line; else DHCP on each interface in turn until
# one gets a lease (a node whose boot server does not answer keeps asking).
if [ -n "$static" ]; then
    [ -n "$iface" ] || iface=$(first_iface)
    ip link set "$iface" up
    ip addr add "$static" dev "$iface"
    { echo "ip='${static%/*}'"; echo "serverid="; echo "hostname="; } >/run/beoboot-dhcp
    while [ -z "$master" ]; do
        log "bproc.ip without bproc.master: the node cannot tell where its master is"
        sleep 60
    done
fi
while [ -z "$static" ]; do
    for dev in /sys/class/net/*; do
        iface="${dev##*/}"
        [ "$iface" = lo ] && continue
        ip link set "$iface" up
        if udhcpc -f -q -n -t 5 -T 2 -i "$iface" -s /etc/beoboot/dhcp >/dev/null 2>&1; then
            break 2
        fi
    done
    log "no DHCP answer on any interface; trying again"
    sleep 5
done
. /run/beoboot-dhcp
log "$iface is $ip${serverid:+ (from $serverid)}"

[ -n "$master" ] || master="$serverid"
case "$master" in
*:*) ;;
*) master="$master:$port" ;;
esac
name="$hostname"
[ -n "$name" ] || name="n${node:-$ip}"
hostname "$name"

if [ -n "$keyurl" ]; then
    # The boot server hands the cluster key over once per boot (bootkey once).
    mkdir -p /etc/clustermatic
    until wget -q -O /etc/clustermatic/key "$keyurl"; do
        log "cannot fetch the cluster key from $keyurl; trying again"
        sleep 5
    done
    chmod 600 /etc/clustermatic/key
fi

log "starting bpslave as $name for master $master"
bpslave -d $verbose -r --key /etc/clustermatic/key --isolate "$name" --diskless \
    --reboot-cmd "reboot -f" --halt-cmd "poweroff -f" --poweroff-cmd "poweroff -f" "$master"
log "bpslave exited with status $?: rebooting"
sleep 2
reboot -f
