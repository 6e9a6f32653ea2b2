//! Prints the process events of this process's children: forks `N` children that exit at
//! once and reports what the filtered proc connector saw. Usage: `procevents_probe N`.
use bproc_sys::procevents::Events;

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let ev = Events::open().expect("open");
    ev.watch(&[std::process::id() as i32], &[]).expect("watch");
    for _ in 0..n {
        let mut c = std::process::Command::new("/bin/true").spawn().expect("spawn");
        c.wait().expect("wait");
    }
    let mut seen = 0;
    while seen < 2 * n {
        let got = ev.next().expect("next");
        for e in got {
            println!("{e:?}");
            seen += 1;
        }
    }
}
