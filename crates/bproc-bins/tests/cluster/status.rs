//! The status page in a real browser (headless Chromium over the DevTools protocol) and
//! `/metrics` read with a Prometheus text-format parser, against live clusters.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bproc_testkit::{until, TestCluster};
use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions, Tab};

use crate::bins;

/// A cluster of `n` nodes serving its status page; returns it and the page's URL. The master
/// binds any free port and logs the one it holds, so no port is guessed ahead of it.
fn cluster_with_page(n: usize, tag: &str, extra: &str) -> (TestCluster, String) {
    let mut spec = TestCluster::spec(&bins(), n, tag);
    spec.extra_config.push_str(&format!("statuspage 127.0.0.1:0\n{extra}"));
    if n > 256 {
        spec.timeout = Duration::from_secs(120);
    }
    let c = TestCluster::start(spec);
    let log = c.master_log();
    let url = until(10, "the master's log to name its status page", || {
        let text = std::fs::read_to_string(&log).ok()?;
        let at = text.find("status page on ")? + "status page on ".len();
        text[at..].split_whitespace().next().map(str::to_owned)
    });
    (c, url)
}

fn get(url: &str) -> String {
    let mut resp = ureq::get(url).call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    resp.body_mut().read_to_string().unwrap()
}

/// `bpstat --json`, by node number.
fn bpstat_json(c: &TestCluster) -> HashMap<i64, serde_json::Value> {
    let out = c.cmd("bpstat").arg("--json").ok();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_array().unwrap().iter().map(|n| (n["node"].as_i64().unwrap(), n.clone())).collect()
}

fn scrape(url: &str) -> prometheus_parse::Scrape {
    let text = get(&format!("{url}metrics"));
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|e| panic!("not Prometheus' text format ({e}):\n{text}"))
}

/// The value of `name` with label `label`=`value` (or without labels when `label` is empty).
fn sample(s: &prometheus_parse::Scrape, name: &str, label: &str, value: &str) -> Option<f64> {
    s.samples.iter().find_map(|x| {
        let labelled = label.is_empty() || x.labels.get(label) == Some(value);
        if x.metric != name || !labelled {
            return None;
        }
        match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            prometheus_parse::Value::Histogram(ref h) => {
                h.iter().find(|b| b.less_than == f64::INFINITY).map(|b| b.count)
            }
            _ => None,
        }
    })
}

/// `/metrics` parses as Prometheus' text format and agrees with `bpstat --json` and with
/// what the test did: a launch on every node, a copy, a refused handshake, a rejected
/// source, every node's boot.
#[test]
fn metrics_match_bpstat() {
    let (c, url) = cluster_with_page(8, "metrics", "allowinsecureports\n");
    c.cmd("bpsh").args(["-a", "true"]).ok();
    let file = c.dir().join("payload");
    std::fs::write(&file, vec![7u8; 100_000]).unwrap();
    c.cmd("bpcp").arg(&file).arg("1:/tmp/payload").ok();
    // A handshake that fails (garbage from node 7's address) and a connection from an
    // address no node has.
    let master = c.master_addr();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for from in ["127.0.1.7", "127.0.1.200"] {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind(format!("{from}:0").parse().unwrap()).unwrap();
            let mut s = s.connect(master.into()).await.unwrap();
            let _ = s.write_all(&[0xffu8; 256]).await;
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut sink)).await;
        }
    });
    let m = until(10, "the refused handshake counted", || {
        let m = scrape(&url);
        (sample(&m, "bproc_auth_refused_total", "", "") == Some(1.0)).then_some(m)
    });
    let one = |name: &str| sample(&m, name, "", "").unwrap_or_else(|| panic!("no {name}"));
    assert_eq!(one("bproc_connections_rejected_total"), 1.0);
    assert_eq!(one("bproc_launches_total"), 1.0);
    assert_eq!(one("bproc_ranks_started_total"), 8.0);
    assert_eq!(one("bproc_bpcp_bytes_total"), 100_000.0);
    assert_eq!(one("bproc_node_boot_seconds"), 8.0, "one boot observed per node");
    assert!(one("bproc_sent_to_slaves_bytes_total") > 0.0);
    assert_eq!(sample(&m, "bproc_nodes", "state", "up"), Some(8.0));
    assert_eq!(sample(&m, "bproc_nodes", "state", "down"), Some(0.0));

    // Per-node values equal bpstat's; those that move (load, free memory, uptime) equal
    // bpstat's just before or just after the scrape.
    let before = bpstat_json(&c);
    let m = scrape(&url);
    let after = bpstat_json(&c);
    assert_eq!(before.len(), 8);
    for (n, node) in &before {
        let node_label = n.to_string();
        let get = |name: &str| {
            sample(&m, name, "node", &node_label).unwrap_or_else(|| panic!("no {name} for {n}"))
        };
        let info = &node["info"];
        assert_eq!(get("bproc_node_cpus"), info["cpus"].as_f64().unwrap());
        assert_eq!(get("bproc_node_memory_total_bytes"), info["mem_total"].as_f64().unwrap());
        for (metric, field, index) in [
            ("bproc_node_load1", "load", Some(0)),
            ("bproc_node_load5", "load", Some(1)),
            ("bproc_node_memory_free_bytes", "mem_free", None),
            ("bproc_node_uptime_seconds", "uptime", None),
        ] {
            let pick = |v: &serde_json::Value| {
                let f = &v["info"][field];
                index.map_or(f, |i| &f[i]).as_f64().unwrap()
            };
            let got = get(metric);
            assert!(
                got == pick(node) || got == pick(&after[n]),
                "{metric} of node {n}: {got}, bpstat {} then {}",
                pick(node),
                pick(&after[n])
            );
        }
        assert_eq!(get("bproc_node_processes"), 0.0, "node {n}");
    }
}

/// Headless Chromium, or `None` (with a SKIPPED line) when it is not installed.
fn browser() -> Option<Browser> {
    let path = ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    let Some(path) = path else {
        eprintln!("SKIPPED: no Chromium to open the status page in (apt install chromium)");
        return None;
    };
    let options = LaunchOptions::default_builder()
        .path(Some(path))
        .headless(true)
        // Root in a container has no user namespaces for Chromium's sandbox.
        .sandbox(false)
        .window_size(Some((1280, 1000)))
        .idle_browser_timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    // The browser process is killed when `Browser` drops, also when an assertion fails.
    Some(Browser::new(options).unwrap_or_else(|e| panic!("cannot start Chromium: {e}")))
}

/// Evaluates `js` (which must produce a string) in the page.
fn eval(tab: &Tab, js: &str) -> String {
    let v = tab.evaluate(js, false).unwrap_or_else(|e| panic!("{js}: {e}"));
    v.value.and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// Waits until the page shows `n` nodes.
fn wait_nodes(tab: &Tab, n: usize) {
    until(30, &format!("the page to show {n} nodes"), || {
        (eval(tab, "document.body.dataset.nodes || ''") == n.to_string()).then_some(())
    });
}

/// Runs `bpctl -S 5 -s down` and returns how long the page took to show it, without a
/// reload (a mark left in the page's window survives).
fn node_5_down(c: &TestCluster, tab: &Tab, selector: &str) -> Duration {
    eval(tab, "window.__mark = 'same page'; ''");
    c.cmd("bpctl").args(["-S", "5", "-s", "down"]).ok();
    let t0 = Instant::now();
    let js = format!("document.querySelector('{selector}').dataset.state");
    // Within a second: the page follows events, it does not poll or reload.
    until(1, "node 5 down on the page", || (eval(tab, &js) == "down").then_some(()));
    let took = t0.elapsed();
    assert_eq!(eval(tab, "window.__mark || ''"), "same page", "the page was reloaded");
    took
}

fn save_screenshot(tab: &Tab, name: &str) -> PathBuf {
    let png = tab.capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
    path
}

/// The table shows every node of a 64-node cluster with its state, and a node set down
/// shows as down within a second, live.
#[test]
fn status_page_table_in_chromium() {
    let Some(browser) = browser() else { return };
    let (c, url) = cluster_with_page(64, "statuspage", "");
    c.cmd("bpsh").args(["-a", "true"]).ok();
    let tab = browser.new_tab().unwrap();
    // A loaded machine (the whole suite at once) can be slow to load a page.
    tab.set_default_timeout(Duration::from_secs(60));
    tab.navigate_to(&url).unwrap().wait_until_navigated().unwrap();
    wait_nodes(&tab, 64);
    assert_eq!(eval(&tab, "document.body.dataset.view"), "table");
    let rows = eval(
        &tab,
        "JSON.stringify([...document.querySelectorAll('#nodes tbody tr')].map(r => \
         [r.id, r.querySelector('td.state').textContent, r.querySelector('td.addr').textContent]))",
    );
    let rows: Vec<(String, String, String)> = serde_json::from_str(&rows).unwrap();
    assert_eq!(rows.len(), 64);
    let stat = bpstat_json(&c);
    for (i, (id, state, addr)) in rows.iter().enumerate() {
        assert_eq!(id, &format!("node-{i}"));
        assert_eq!(state, stat[&(i as i64)]["state"].as_str().unwrap(), "node {i}");
        assert_eq!(addr, stat[&(i as i64)]["addr"].as_str().unwrap(), "node {i}");
    }
    let took = node_5_down(&c, &tab, "#node-5");
    eprintln!("node 5 showed down {took:?} after bpctl returned");
    assert_eq!(eval(&tab, "document.querySelector('#node-5 td.state').textContent"), "down");
    assert_eq!(eval(&tab, "document.querySelector('#node-4 td.state').textContent"), "up");
    save_screenshot(&tab, "status-page.png");
}

/// The dots view of a 1024-node cluster: one dot per node, coloured by state, and a node
/// set down turns within a second, live.
#[test]
fn status_page_dots_at_1024_nodes() {
    let Some(browser) = browser() else { return };
    let (c, url) = cluster_with_page(1024, "statusdots", "");
    let tab = browser.new_tab().unwrap();
    // A loaded machine (the whole suite at once) can be slow to load a page.
    tab.set_default_timeout(Duration::from_secs(60));
    tab.navigate_to(&url).unwrap().wait_until_navigated().unwrap();
    wait_nodes(&tab, 1024);
    assert_eq!(eval(&tab, "document.body.dataset.view"), "dots", "large clusters open on dots");
    let count =
        |sel: &str| eval(&tab, &format!("String(document.querySelectorAll('{sel}').length)"));
    assert_eq!(count(".dot"), "1024");
    assert_eq!(count(".dot.s-up"), "1024");
    let took = node_5_down(&c, &tab, "#dot-5");
    eprintln!("dot 5 showed down {took:?} after bpctl returned");
    assert_eq!(count(".dot.s-down"), "1");
    assert_eq!(eval(&tab, "document.querySelector('#dot-5').className"), "dot s-down");
    // The whole grid fits a laptop screen: 32 rows of 32 dots.
    let height = eval(&tab, "String(document.getElementById('dots').offsetHeight)");
    assert!(height.parse::<u32>().unwrap() < 800, "dots grid {height}px high");
    // Pointing at a dot names its node.
    eval(&tab, "document.getElementById('dot-5').click(); ''");
    assert!(eval(&tab, "document.getElementById('detail').textContent").starts_with("n5: down"));
    save_screenshot(&tab, "status-dots.png");
}
