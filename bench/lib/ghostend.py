#!/usr/bin/env python3
"""Ghost-end latency: from a forked process's exit on a node to its ghost's exit on the front
end, both read from the kernel's process events (the virtual cluster's nodes and front end
share one kernel, so both ends carry timestamps of one clock).

  ghostend.py CMD...     runs CMD (a bpsh whose remote shell prints its pid first, then forks
                         children, one at a time, each printing "PID CODE" and exiting with a
                         CODE of its own, 1 to 255) and prints one line:
                         "pairs median_ms max_ms statuses_equal pids_equal"

The shell's ghost has the shell's pid (the launch gives it); the node's copy is found in /proc
by that pid in its namespace. A child's exit is one whose parent is the node's shell; its
ghost's, one whose parent is the shell's ghost; the two are paired by their exit code, so a
pair whose codes match is a status passed on exactly.
"""
import os
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
PROC_EVENT_EXIT = 0x80000000


def subscribe():
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind((os.getpid(), CN_IDX_PROC))
    cn = struct.pack("=IIIIHH", CN_IDX_PROC, 1, 0, 0, 4, 0) + struct.pack("=I", 1)
    s.send(struct.pack("=IHHII", 16 + len(cn), 3, 0, 0, os.getpid()) + cn)
    return s


def host_pid_of(ns_pid):
    """The pid, in this namespace, of the process that is ns_pid in a child namespace."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                for line in f:
                    if line.startswith("NSpid:"):
                        ids = line.split()[1:]
                        if len(ids) == 2 and int(ids[1]) == ns_pid:
                            return int(name)
        except OSError:
            pass
    return None


def main():
    cmd = sys.argv[1:]
    sock = subscribe()
    exits = []  # (ts_ns, pid, parent_tgid, code)
    stop = threading.Event()

    def reader():
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                data = sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                continue
            off = 0
            while off + 16 <= len(data):
                length = struct.unpack_from("=I", data, off)[0]
                ev = off + 16 + 20
                what, _cpu, ts = struct.unpack_from("=IIQ", data, ev)
                if what == PROC_EVENT_EXIT:
                    pid, _tgid, code, _sig, _ppid, ptgid = struct.unpack_from("=IIIIII", data, ev + 16)
                    exits.append((ts, pid, ptgid, code))
                off += (length + 3) & ~3
                if length == 0:
                    break

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    shell = int(p.stdout.readline())
    node_shell = None
    t0 = time.time()
    while node_shell is None and time.time() - t0 < 5:
        node_shell = host_pid_of(shell)
    printed = [tuple(map(int, l.split())) for l in p.stdout if l.strip()]
    p.wait()
    time.sleep(0.5)
    stop.set()
    t.join()
    # Each child exits with a code of its own (the shell's `sleep` with 0): pairs by code.
    node = {e[3]: e for e in exits if e[2] == node_shell}
    ghosts = {e[3]: e for e in exits if e[2] == shell}
    pairs = [(node[k], ghosts[k]) for k in node if k in ghosts]
    lat = [(g[0] - c[0]) / 1e6 for c, g in pairs]
    ghost_pids = {g[1]: g[3] for g in ghosts.values()}
    # A child's pid is its ghost's when the ghost with that pid ended with its code.
    pids = sum(1 for pid, code in printed if ghost_pids.get(pid) == code << 8)
    if not lat:
        print(f"0 0 0 0 0 (node shell {node_shell}, {len(node)} node exits, {len(ghosts)} ghost exits)")
        return
    print(f"{len(pairs)} {statistics.median(lat):.2f} {max(lat):.2f} {len(pairs)} {pids}")

main()
