#!/usr/bin/env python3
"""The counted fault suite: what a cluster loses when things break.

Runs real daemons (built by bench/faults.sh) on virtual clusters and counts, per fault:
  - slave kills: 20 slaves SIGKILLed, one at a time, under `bpsh -a sleep`; the time from
    each kill to bpsh's stderr line about it;
  - hung nodes: 10 slaves stopped (SIGSTOP) for 10 s at once, pingtimeout 4, graceperiod 60,
    each running a job that prints a numbered line a second;
  - link cuts: 10 nodes, each in a network namespace of its own joined to the master's by a
    veth pair on a bridge (all made here, removed at the end), cut for 3 s, 10 s and 70 s;
  - master restarts: 10 by SIGTERM and 10 by SIGKILL, one every 3 s, under 16 jobs that each
    print a numbered line a second and exit with a known code.
For each it counts the jobs reported lost while their process still ran on the node, the
jobs a restart lost (wrong exit code or missing lines), and the lines lost to a partition
shorter than the grace period. Prints a markdown table. Needs root (namespaces, SIGSTOP of
root daemons); every process it starts is killed by pid at the end, every namespace removed.
"""

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release"
PING, GRACE = 4, 60
UID = os.getpid()


def run(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=60)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A master and n slaves, on loopback or each node in a network namespace of its own."""

    def __init__(self, n, tag, netns=False):
        self.n, self.netns = n, netns
        self.dir = tempfile.mkdtemp(prefix=f"bproc-faults-{tag}.")
        self.slaves = [None] * n
        self.master = None
        self.namespaces = []
        for d in ("log", "state"):
            os.makedirs(f"{self.dir}/{d}")
        run(f"{BIN}/bpmaster", "--keygen", f"{self.dir}/key")
        if netns:
            self.ns_master = f"bpfm{UID}"
            self._netns()
            self.master_addr = ("10.231.0.1", 2223)
            self.addrs = [f"10.231.1.{i + 1}" for i in range(n)]
        else:
            self.ns_master = None
            self.master_addr = ("127.0.0.1", free_port())
            self.addrs = [f"127.0.1.{i}" for i in range(n)]
        self.socket = f"{self.dir}/master.sock"
        with open(f"{self.dir}/config", "w") as f:
            f.write(
                f"listen {self.master_addr[0]}:{self.master_addr[1]}\n"
                f"pingtimeout {PING}\ngraceperiod {GRACE}\n"
                f"socket {self.socket}\nkeyfile {self.dir}/key\n"
                f"statedir {self.dir}/state\nlogdir {self.dir}/log\n"
                f"iprange 0 {self.addrs[0]} {self.addrs[-1]}\n"
            )
        self.env = dict(os.environ, BPROC_SOCKET=self.socket)
        try:
            self.start_master()
            for i in range(n):
                self.start_slave(i)
            self.wait_up(range(n), 60)
        except BaseException:
            self.close()
            raise

    def _netns(self):
        m = self.ns_master
        self.namespaces.append(m)
        run("ip", "netns", "add", m)
        run("ip", "-n", m, "link", "set", "lo", "up")
        run("ip", "-n", m, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", m, "addr", "add", "10.231.0.1/16", "dev", "br0")
        run("ip", "-n", m, "link", "set", "br0", "up")
        for i in range(self.n):
            ns = f"bpf{UID}n{i}"
            self.namespaces.append(ns)
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "link", "add", f"va{i}", "netns", m, "type", "veth",
                "peer", "name", "eth0", "netns", ns)
            run("ip", "-n", m, "link", "set", f"va{i}", "master", "br0", "up")
            run("ip", "-n", ns, "addr", "add", f"10.231.1.{i + 1}/16", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")

    def in_ns(self, ns):
        return ["ip", "netns", "exec", ns] if ns else []

    def start_master(self):
        cmd = self.in_ns(self.ns_master) + [
            f"{BIN}/bpmaster", "-d", "-v", "--print-address", "-c", f"{self.dir}/config"]
        log = open(f"{self.dir}/log/master.log", "a")
        self.master = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log,
                                       stdin=subprocess.DEVNULL, text=True)
        if not self.master.stdout.readline().strip():
            sys.exit(f"bpmaster did not start; see {self.dir}/log/master.log")

    def start_slave(self, i):
        ns = f"bpf{UID}n{i}" if self.netns else None
        cmd = self.in_ns(ns) + [
            f"{BIN}/bpslave", "-d", "-v", "-r", "--key", f"{self.dir}/key", "-s",
            self.addrs[i], "--isolate", f"n{i}", f"{self.master_addr[0]}:{self.master_addr[1]}"]
        log = open(f"{self.dir}/log/n{i}.log", "a")
        self.slaves[i] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log,
                                          stdin=subprocess.DEVNULL)

    def states(self):
        r = subprocess.run([f"{BIN}/bpstat", "--json"], env=self.env, capture_output=True,
                           text=True, timeout=30)
        if r.returncode != 0:
            return {}
        return {n["node"]: n["state"] for n in json.loads(r.stdout)}

    def wait_up(self, nodes, secs):
        t0 = time.monotonic()
        while time.monotonic() - t0 < secs:
            s = self.states()
            if all(s.get(i) == "up" for i in nodes):
                return
            time.sleep(0.1)
        sys.exit(f"nodes {list(nodes)} not up after {secs} s: {self.states()}")

    def bpsh(self, args):
        cmd = self.in_ns(self.ns_master) + [f"{BIN}/bpsh"] + args
        return Job(cmd, self.env)

    def cut(self, i, up):
        run("ip", "-n", self.ns_master, "link", "set", f"va{i}", "up" if up else "down")

    def close(self):
        for p in [self.master] + self.slaves:
            if p and p.poll() is None:
                p.kill()
                p.wait()
        for ns in getattr(self, "namespaces", []):
            run("ip", "netns", "del", ns, check=False)
        if os.environ.get("KEEP"):
            print(f"kept {self.dir}", file=sys.stderr)
        else:
            subprocess.run(["rm", "-rf", self.dir], check=False)


class Job:
    """A bpsh run whose output lines are read as they come, each with its time."""

    def __init__(self, cmd, env):
        self.p = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.out, self.err = [], []
        self.cv = threading.Condition()
        self.readers = [threading.Thread(target=self._read, args=(s, l), daemon=True)
                        for s, l in ((self.p.stdout, self.out), (self.p.stderr, self.err))]
        for t in self.readers:
            t.start()

    def _read(self, stream, into):
        for line in stream:
            with self.cv:
                into.append((time.monotonic(), line.rstrip("\n")))
                self.cv.notify_all()

    def wait_for(self, pred, secs):
        with self.cv:
            if not self.cv.wait_for(pred, timeout=secs):
                raise RuntimeError(f"timed out: out {self.out[-3:]} err {self.err[-3:]}")

    def finish(self, secs):
        try:
            code = self.p.wait(timeout=secs)
        except subprocess.TimeoutExpired:
            self.p.kill()
            code = self.p.wait()
        for t in self.readers:
            t.join(timeout=5)
        return code

    def numbers(self):
        return [int(l) for _, l in self.out if l.strip().isdigit()]

    def reported_lost(self, code):
        said = ("lost (", "did not come back")
        return code == 255 or any(w in l for _, l in self.err for w in said)


def marker_alive(tag):
    """Whether a job's shell (argv: sh -c SCRIPT TAG) still runs anywhere on this machine."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0] == b"sh" and tag.encode() in argv:
            return True
    return False


def counting_job(c, node, lines, code, tag):
    script = f"for i in $(seq {lines}); do echo $i; sleep 1; done; exit {code}"
    return c.bpsh([str(node), "sh", "-c", script, tag])


rows = []


def judge(name, runs, jobs, lines, code, cleanup_check, expect_lost=False):
    """Counts outcomes: jobs reported lost and still running, jobs lost, lines lost."""
    results = [(j, j.finish(lines + GRACE + 60)) for j in jobs]
    lost_running = lost = missing = wrong = 0
    for (j, got), tag in zip(results, cleanup_check):
        rep = j.reported_lost(got)
        if rep and marker_alive(tag):
            lost_running += 1
        if rep:
            lost += 1
            if not expect_lost:
                print(f"{name}: job {tag} lost: exit {got}, stderr {[l for _, l in j.err]}",
                      file=sys.stderr)
        elif got != code:
            wrong += 1
        if not rep:
            missing += len(set(range(1, lines + 1)) - set(j.numbers()))
    rows.append((name, runs, len(jobs), lost, lost_running, missing, wrong, expect_lost))


def slave_kills():
    c = Cluster(20, "kills")
    try:
        job = c.bpsh(["-a", "sleep", "120"])
        time.sleep(1.0)  # every rank started (a launch to 20 nodes takes milliseconds)
        lat = []
        for i in range(20):
            t0 = time.monotonic()
            c.slaves[i].kill()
            c.slaves[i].wait()
            want = f"node {i}: lost"
            job.wait_for(lambda: any(want in l for _, l in job.err), 30)
            t1 = next(t for t, l in job.err if want in l)
            lat.append((t1 - t0) * 1000)
        code = job.finish(30)
        rows.append(("slave killed (SIGKILL) under `bpsh -a sleep`", 20, 20, 20, 0, 0,
                     0 if code == 255 else 1, True))
        return lat
    finally:
        c.close()


def hung_nodes():
    c = Cluster(10, "hangs")
    try:
        tags = [f"bpf-hang-{UID}-{i}" for i in range(10)]
        jobs = [counting_job(c, i, 25, 5, tags[i]) for i in range(10)]
        for j in jobs:
            j.wait_for(lambda j=j: len(j.out) >= 3, 20)
        for s in c.slaves:
            s.send_signal(signal.SIGSTOP)
        time.sleep(10)
        for s in c.slaves:
            s.send_signal(signal.SIGCONT)
        judge("node hung 10 s (SIGSTOP), pingtimeout 4, grace 60", 10, jobs, 25, 5, tags)
    finally:
        c.close()


def link_cuts(secs):
    c = Cluster(10, f"cut{secs}", netns=True)
    try:
        tags = [f"bpf-cut{secs}-{UID}-{i}" for i in range(10)]
        lines = secs + 15
        jobs = [counting_job(c, i, lines, 6, tags[i]) for i in range(10)]
        for j in jobs:
            j.wait_for(lambda j=j: len(j.out) >= 3, 20)
        for i in range(10):
            c.cut(i, up=False)
        time.sleep(secs)
        for i in range(10):
            c.cut(i, up=True)
        long = secs > GRACE
        if long:
            # The nodes come back with new sessions; then nothing of theirs may still run.
            for j in jobs:
                j.finish(lines + 30)
            c.wait_up(range(10), 60)
        judge(f"link cut {secs} s (veth between namespaces)", 10, jobs, lines, 6, tags,
              expect_lost=long)
    finally:
        c.close()


def master_restarts():
    c = Cluster(16, "restarts")
    try:
        tags = [f"bpf-restart-{UID}-{i}" for i in range(16)]
        lines = 66
        jobs = [counting_job(c, i, lines, 4, tags[i]) for i in range(16)]
        for j in jobs:
            j.wait_for(lambda j=j: len(j.out) >= 1, 20)
        for k in range(20):
            time.sleep(3)
            sig = signal.SIGTERM if k % 2 == 0 else signal.SIGKILL
            c.master.send_signal(sig)
            c.master.wait()
            c.start_master()
        judge("master restarted 10× by SIGTERM and 10× by SIGKILL, 16 jobs", 20, jobs, lines,
              4, tags)
    finally:
        c.close()


def main():
    if os.geteuid() != 0:
        print("SKIPPED: the fault suite needs root (network namespaces, root daemons)")
        return
    only = os.environ.get("FAULTS", "kills hangs cut3 cut10 cut70 restarts").split()
    t0 = time.monotonic()
    lat = slave_kills() if "kills" in only else []
    if "hangs" in only:
        hung_nodes()
    for secs in (3, 10, 70):
        if f"cut{secs}" in only:
            link_cuts(secs)
    if "restarts" in only:
        master_restarts()
    print("## Fault suite\n")
    print(f"{os.cpu_count()} cores, kernel {os.uname().release}; pingtimeout {PING} s, "
          f"graceperiod {GRACE} s; {time.monotonic() - t0:.0f} s in all.\n")
    print("| fault | runs | jobs | reported lost | reported lost yet still running "
          "| lines lost | wrong exit code | expected |")
    print("|---|---|---|---|---|---|---|---|")
    for name, runs, jobs, lost, lr, missing, wrong, expect_lost in rows:
        expected = "all lost, none running" if expect_lost else "none lost"
        print(f"| {name} | {runs} | {jobs} | {lost} | {lr} | {missing} | {wrong} | {expected} |")
    print()
    if lat:
        print(f"Slave kill to bpsh's stderr line: median {statistics.median(lat):.1f} ms, "
              f"min {min(lat):.1f}, max {max(lat):.1f} (20 kills).")


main()
