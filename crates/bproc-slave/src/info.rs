//! The machine report a slave sends with its join and every pong: CPUs, memory, load, uptime,
//! kernel release, host name and architecture, read from `/proc` and `uname(2)`.

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

/// Parses `/proc/loadavg` into hundredths.
fn loads(text: &str) -> [u32; 3] {
    let mut out = [0; 3];
    for (o, w) in out.iter_mut().zip(text.split_whitespace()) {
        *o = w.parse::<f64>().map_or(0, |v| (v * 100.0).round() as u32);
    }
    out
}

/// The CPUs this daemon may use, read once: the standard library's answer reads the
/// cgroup's quota files each time, half the cost of a pong (a thousand virtual nodes answer
/// pings all through a launch).
fn cpus() -> u32 {
    static CPUS: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32))
}

/// Reads this machine's report. Fields that cannot be read are left zero or empty.
pub fn node_info() -> NodeInfo {
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let uts = nix::sys::utsname::uname().ok();
    let s = |f: fn(&nix::sys::utsname::UtsName) -> &std::ffi::OsStr| {
        uts.as_ref().map(|u| f(u).to_string_lossy().into_owned()).unwrap_or_default()
    };
    NodeInfo {
        cpus: cpus(),
        mem_total: meminfo_kib(&mem, "MemTotal:") * 1024,
        mem_free: meminfo_kib(&mem, "MemAvailable:") * 1024,
        load: loads(&std::fs::read_to_string("/proc/loadavg").unwrap_or_default()),
        uptime: std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0, |u| u as u64),
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
        assert_eq!(loads("0.50 1.25 10.00 1/234 5678\n"), [50, 125, 1000]);
        let mem = "MemTotal:       24576000 kB\nMemAvailable:   1000 kB\n";
        assert_eq!(meminfo_kib(mem, "MemTotal:"), 24576000);
        assert_eq!(meminfo_kib(mem, "MemAvailable:"), 1000);
        assert_eq!(meminfo_kib(mem, "Missing:"), 0);
    }

    #[test]
    fn this_machine_reports_something() {
        let i = node_info();
        assert!(i.cpus >= 1 && i.mem_total > 0 && !i.kernel.is_empty());
    }
}
