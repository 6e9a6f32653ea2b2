#!/usr/bin/env python3
"""User memory of a set of processes: the PSS of each address space, counted once.

  pss.py PID...     prints the sum in KiB

Processes can share one address space (the light ghosts of one launch do), and each of them
then shows the whole space's PSS in /proc/PID/smaps_rollup. Processes are grouped by the
kernel's own answer (kcmp KCMP_VM, which also orders them), so a shared space is counted
once and separate ones each.
"""
import ctypes
import functools
import os
import sys

SYS_KCMP = 312  # x86-64
KCMP_VM = 1

libc = ctypes.CDLL(None, use_errno=True)


def kcmp_vm(a, b):
    """0 if a and b share an address space, else 1 or 2: the kernel orders them."""
    r = libc.syscall(SYS_KCMP, a, b, KCMP_VM, 0, 0)
    if r < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), f"kcmp {a} {b}")
    return -1 if r == 1 else (1 if r == 2 else 0)


def pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def main():
    pids = []
    for pid in (int(p) for p in sys.argv[1:]):
        try:
            kcmp_vm(pid, pid)
            pids.append(pid)
        except OSError:
            continue  # gone
    # Sorted in the kernel's order, processes that share a space are neighbours.
    pids.sort(key=functools.cmp_to_key(kcmp_vm))
    spaces = [p for i, p in enumerate(pids) if i == 0 or kcmp_vm(pids[i - 1], p) != 0]
    print(sum(pss_kib(p) for p in spaces))


main()
