//! The machine report a slave sends with its join and every pong: CPUs, memory, load, uptime,
//! kernel release, host name and architecture, read from `/proc`, `sysinfo(2)` and `uname(2)`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bproc_proto::NodeInfo;

/// Set once at start-up when the node is diskless.
pub(crate) static DISKLESS: AtomicBool = AtomicBool::new(false);
/// Bytes fetched into the staging cache so far.
pub(crate) static STAGED_BYTES: AtomicU64 = AtomicU64::new(0);

fn meminfo_kib(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or(0)
}

/// A load average in hundredths, rounded as `/proc/loadavg` prints it.
fn hundredths(load: f64) -> u32 {
    (load * 100.0).round() as u32
}

/// The CPUs this daemon may use, read once: the standard library's answer reads the
/// cgroup's quota files each time, half the cost of a pong (a thousand virtual nodes answer
/// pings all through a launch).
fn cpus() -> u32 {
    static CPUS: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32))
}

/// Reads this machine's report. Fields that cannot be read are left zero or empty. Every
/// slave of a virtual cluster answers each round of pings at once, so this stays cheap: the
/// memory in one read of a page (`/proc/meminfo` says it is empty, and a whole-file read
/// grows its buffer a system call at a time), the load and uptime from `sysinfo(2)` rather
/// than two more files.
pub fn node_info() -> NodeInfo {
    let mem = bproc_sys::peer::read_proc("/proc/meminfo").unwrap_or_default();
    let sys = nix::sys::sysinfo::sysinfo().ok();
    let uts = nix::sys::utsname::uname().ok();
    let s = |f: fn(&nix::sys::utsname::UtsName) -> &std::ffi::OsStr| {
        uts.as_ref().map(|u| f(u).to_string_lossy().into_owned()).unwrap_or_default()
    };
    NodeInfo {
        cpus: cpus(),
        mem_total: meminfo_kib(&mem, "MemTotal:") * 1024,
        mem_free: meminfo_kib(&mem, "MemAvailable:") * 1024,
        load: sys.as_ref().map_or([0; 3], |s| {
            let (one, five, fifteen) = s.load_average();
            [one, five, fifteen].map(hundredths)
        }),
        uptime: sys.as_ref().map_or(0, |s| s.uptime().as_secs()),
        kernel: s(|u| u.release()),
        hostname: s(|u| u.nodename()),
        arch: s(|u| u.machine()),
        diskless: DISKLESS.load(Ordering::Relaxed),
        staged_bytes: STAGED_BYTES.load(Ordering::Relaxed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_formats() {
        let mem = "MemTotal:       24576000 kB\nMemAvailable:   1000 kB\n";
        assert_eq!(meminfo_kib(mem, "MemTotal:"), 24576000);
        assert_eq!(meminfo_kib(mem, "MemAvailable:"), 1000);
        assert_eq!(meminfo_kib(mem, "Missing:"), 0);
    }

    #[test]
    fn this_machine_reports_something() {
        let i = node_info();
        assert!(i.cpus >= 1 && i.mem_total > 0 && i.mem_free > 0 && !i.kernel.is_empty());
        assert!(i.uptime > 0, "the uptime comes from sysinfo(2)");
        // The load as /proc/loadavg has it, read around the report (it moves every 5 s).
        let text = std::fs::read_to_string("/proc/loadavg").unwrap();
        let one: f64 = text.split_whitespace().next().unwrap().parse().unwrap();
        let near = (i64::from(i.load[0]) - (one * 100.0).round() as i64).abs();
        assert!(near <= 100, "load {} against /proc/loadavg's {one}", i.load[0]);
    }
}
