// bproc status page: follows bpmaster's server-sent events (/events), each a full view of
// the node table, and updates the table and the dots in place. No polling: the master sends
// a view when something changes.
//
// DOM contract (tests and scripts read it): table rows are `tr#node-N` and dots `div#dot-N`,
// both with `data-state`; `body` carries `data-seq` (the master's change counter of the view
// shown), `data-nodes` (how many nodes) and `data-view` (table, dots or both).
"use strict";

const PER_ROW = 32;
const KNOWN = ["up", "down", "boot", "error", "unreachable"];
const rows = new Map();
const dots = new Map();
let layout = "";
let nodeCount = 0;

function stateClass(state) {
  return "s-" + (KNOWN.includes(state) ? state : "other");
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function duration(s) {
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600);
  const m = Math.floor(s % 3600 / 60);
  if (d) return d + "d " + h + "h";
  if (h) return h + "h " + m + "m";
  return m + "m " + (s % 60) + "s";
}

function modeString(mode) {
  const m = parseInt(mode, 8);
  let s = "";
  for (const shift of [6, 3, 0]) s += "--" + ((m >> shift) & 1 ? "x" : "-");
  return "-" + s;
}

function cells(n) {
  const i = n.info;
  const mem = i ? bytes(i.mem_total - i.mem_free) + " / " + bytes(i.mem_total) : "";
  const used = i && i.mem_total ? (i.mem_total - i.mem_free) / i.mem_total : 0;
  return {
    node: String(n.node),
    state: n.state,
    mode: modeString(n.mode),
    user: n.user,
    group: n.group,
    addr: n.addr || "",
    cpus: i ? String(i.cpus) : "",
    load: i ? i.load.map((l) => l.toFixed(2)).join(" ") : "",
    mem: mem,
    memBar: used,
    uptime: i ? duration(i.uptime) : "",
    procs: i ? String(n.procs) : "",
  };
}

const COLUMNS = ["node", "state", "mode", "user", "group", "addr", "cpus", "load", "mem",
  "uptime", "procs"];

function updateRow(n) {
  let tr = rows.get(n.node);
  if (!tr) {
    tr = document.createElement("tr");
    tr.id = "node-" + n.node;
    for (const c of COLUMNS) {
      const td = document.createElement("td");
      td.className = c;
      tr.appendChild(td);
    }
    rows.set(n.node, tr);
  }
  const v = cells(n);
  tr.dataset.state = n.state;
  COLUMNS.forEach((c, k) => {
    const td = tr.children[k];
    if (c === "mem") {
      td.textContent = v.mem;
      if (v.mem) {
        const bar = document.createElement("span");
        bar.className = "bar";
        const fill = document.createElement("i");
        fill.style.width = Math.round(v.memBar * 100) + "%";
        bar.appendChild(fill);
        td.appendChild(bar);
      }
    } else if (td.textContent !== v[c]) {
      td.textContent = v[c];
    }
  });
  return tr;
}

function describe(n) {
  const v = cells(n);
  let s = "n" + n.node + ": " + n.state + "  " + v.mode + " " + v.user + " " + v.group;
  if (n.addr) s += "  " + n.addr;
  if (n.info) s += "  " + v.cpus + " CPUs, load " + v.load + ", mem " + v.mem + ", up " +
    v.uptime + ", " + v.procs + " procs";
  return s;
}

function layoutDots(nodes) {
  const box = document.getElementById("dots");
  box.textContent = "";
  dots.clear();
  nodes.forEach((n, k) => {
    if (k % PER_ROW === 0) {
      const label = document.createElement("div");
      label.className = "rowlabel";
      label.textContent = n.node;
      box.appendChild(label);
    }
    const d = document.createElement("div");
    d.id = "dot-" + n.node;
    d.className = "dot";
    d.addEventListener("mouseenter", () => showDetail(d));
    d.addEventListener("click", () => showDetail(d));
    box.appendChild(d);
    dots.set(n.node, d);
  });
}

let selected = null;
function showDetail(d) {
  if (selected) selected.classList.remove("selected");
  selected = d;
  d.classList.add("selected");
  document.getElementById("detail").textContent = d.title;
}

function render(view) {
  const key = view.nodes.map((n) => n.node).join(",");
  const tbody = document.querySelector("#nodes tbody");
  if (key !== layout) {
    layout = key;
    layoutDots(view.nodes);
    tbody.textContent = "";
    rows.clear();
    for (const n of view.nodes) tbody.appendChild(updateRow(n));
  }
  for (const n of view.nodes) {
    updateRow(n);
    const d = dots.get(n.node);
    d.dataset.state = n.state;
    d.className = "dot " + stateClass(n.state) + (d === selected ? " selected" : "");
    d.title = describe(n);
    if (d === selected) document.getElementById("detail").textContent = d.title;
  }
  const summary = document.getElementById("summary");
  summary.textContent = "";
  const total = document.createElement("span");
  total.textContent = view.nodes.length + " nodes";
  summary.appendChild(total);
  const legend = document.getElementById("legend");
  legend.textContent = "";
  for (const [state, count] of Object.entries(view.counts)) {
    if (!count && !KNOWN.includes(state)) continue;
    for (const box of [summary, legend]) {
      const s = document.createElement("span");
      s.dataset.state = state;
      const sw = document.createElement("i");
      sw.className = "swatch " + stateClass(state);
      s.appendChild(sw);
      s.appendChild(document.createTextNode(state + " " + count));
      box.appendChild(s);
    }
  }
  const ghosts = document.createElement("span");
  ghosts.textContent = view.ghosts + " ghosts";
  summary.appendChild(ghosts);
  if (nodeCount !== view.nodes.length) {
    nodeCount = view.nodes.length;
    if (!location.hash) showView(nodeCount > 256 ? "dots" : "table");
  }
  document.body.dataset.nodes = String(view.nodes.length);
  document.body.dataset.seq = String(view.seq);
}

function showView(v) {
  if (!["table", "dots", "both"].includes(v)) v = nodeCount > 256 ? "dots" : "table";
  document.getElementById("table-view").hidden = v === "dots";
  document.getElementById("dots-view").hidden = v === "table";
  for (const b of document.querySelectorAll("#views button")) {
    b.classList.toggle("active", b.dataset.view === v);
  }
  document.body.dataset.view = v;
}

for (const b of document.querySelectorAll("#views button")) {
  b.addEventListener("click", () => { location.hash = b.dataset.view; });
}
window.addEventListener("hashchange", () => showView(location.hash.slice(1)));
showView(location.hash.slice(1));

const conn = document.getElementById("conn");
const events = new EventSource("events");
events.addEventListener("nodes", (e) => render(JSON.parse(e.data)));
events.addEventListener("open", () => {
  conn.className = "conn-live";
  conn.textContent = "live";
});
events.addEventListener("error", () => {
  // EventSource reconnects by itself; say so until it does.
  conn.className = "conn-wait";
  conn.textContent = "reconnecting…";
});
