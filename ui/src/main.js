// The ilanet dashboard: the SC17 demo's map of sites, a terminal inside any container, the
// live translation steps of the visitor's flows and the tables behind them.
import "@xterm/xterm/css/xterm.css";
import "./style.css";
import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";
import { geoMercator, geoPath } from "d3-geo";
import { feature, mesh } from "topojson-client";
import world from "world-atlas/countries-50m.json";

const $ = (sel) => document.querySelector(sel);
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const state = {
  data: null,          // last feed message
  sitesKey: "",        // sites as JSON, to redraw the map only when they change
  term: null,          // { name, term, fit, ws, sir }
  selectedFlow: null,  // "src|dst|proto" chosen in the flow table
  tab: "flows",
};
// For the browser tests (latency of the echo, what the terminal shows).
window.__ilanet = state;

// ---------------------------------------------------------------- live feed
function connect() {
  const ws = new WebSocket(`ws://${location.host}/api/live`);
  const conn = $("#conn");
  ws.onopen = () => { conn.textContent = "live"; conn.className = "badge conn ok"; };
  ws.onmessage = (m) => {
    try { render(JSON.parse(m.data)); } catch (e) { console.error(e); }
  };
  ws.onclose = () => {
    conn.textContent = "disconnected — retrying"; conn.className = "badge conn bad";
    setTimeout(connect, 1500);
  };
}

function render(data) {
  state.data = data;
  const snap = data.snapshot;
  $("#title").textContent = snap.title;
  document.title = `ilanet — ${snap.title}`;
  $("#mode").hidden = !snap.read_only;
  $("#term-off").hidden = !snap.read_only;
  if (snap.read_only) $("#term-name").textContent = "— off (read-only)";
  $("#term-help").hidden = snap.read_only || !!state.term;
  const key = JSON.stringify(snap.sites.map((s) => [s.name, s.location, s.locator, s.agent_up, s.containers]));
  if (key !== state.sitesKey) {
    state.sitesKey = key;
    drawMap(snap);
    drawSites(snap);
  }
  drawSteps(data);
  drawTables(data);
}

// ---------------------------------------------------------------- map
const countries = feature(world, world.objects.countries);
const borders = mesh(world, world.objects.countries, (a, b) => a !== b);

function drawMap(snap) {
  const svg = $("#map");
  const w = svg.clientWidth || 600, h = svg.clientHeight || 300;
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.replaceChildren();
  const placed = snap.sites.filter((s) => s.location);
  // Fit the sites with a margin of a few degrees, so a handful of cities fill the panel.
  let lons = placed.map((s) => s.location.lon), lats = placed.map((s) => s.location.lat);
  if (!placed.length) { lons = [-170, 170]; lats = [-60, 75]; }
  const pad = Math.max(4, (Math.max(...lons) - Math.min(...lons)) * 0.25, (Math.max(...lats) - Math.min(...lats)) * 0.25);
  const box = {
    type: "MultiPoint",
    coordinates: [
      [Math.max(-180, Math.min(...lons) - pad), Math.max(-80, Math.min(...lats) - pad)],
      [Math.min(180, Math.max(...lons) + pad), Math.min(84, Math.max(...lats) + pad)],
    ],
  };
  const proj = geoMercator().fitExtent([[10, 10], [w - 10, h - 10]], box);
  proj.clipExtent([[0, 0], [w, h]]);
  const path = geoPath(proj);
  const land = document.createElementNS(SVG, "path");
  land.setAttribute("class", "land");
  land.setAttribute("d", path(countries));
  svg.append(land);
  const b = document.createElementNS(SVG, "path");
  b.setAttribute("class", "land");
  b.setAttribute("fill", "none");
  b.setAttribute("d", path(borders));
  svg.append(b);
  // Labels go right of their dot unless that would leave the map or cover another label:
  // then left, below or above (close cities, such as Austin and New Orleans on a phone).
  const boxes = [];
  const labelAt = (x, y, text) => {
    const lw = text.length * 7, lh = 14;
    const tries = [[x + 10, y + 4, "start"], [x - 10, y + 4, "end"], [x - lw / 2, y + 20, "start"], [x - lw / 2, y - 12, "start"]];
    for (const [tx, ty, anchor] of tries) {
      const left = anchor === "end" ? tx - lw : tx;
      const box = [left, ty - lh + 3, left + lw, ty + 3];
      const inside = box[0] >= 0 && box[2] <= w && box[1] >= 0 && box[3] <= h;
      const free = boxes.every((b) => box[2] < b[0] || box[0] > b[2] || box[3] < b[1] || box[1] > b[3]);
      if (inside && free) { boxes.push(box); return [tx, ty, anchor]; }
    }
    return [x + 10, y + 4, "start"];
  };
  for (const s of placed) {
    const [x, y] = proj([s.location.lon, s.location.lat]);
    boxes.push([x - 8, y - 8, x + 8, y + 8]);
  }
  for (const s of placed) {
    const [x, y] = proj([s.location.lon, s.location.lat]);
    const g = document.createElementNS(SVG, "g");
    g.setAttribute("class", "site");
    g.setAttribute("tabindex", "0");
    g.setAttribute("role", "button");
    g.setAttribute("data-site", s.name);
    g.setAttribute("aria-label", `${s.location.name}: ${s.containers.length} containers`);
    const c = document.createElementNS(SVG, "circle");
    c.setAttribute("cx", x); c.setAttribute("cy", y); c.setAttribute("r", 7);
    const t = document.createElementNS(SVG, "text");
    const label = `${s.location.name} (${s.containers.length})`;
    const [tx, ty, anchor] = labelAt(x, y, label);
    t.setAttribute("x", tx); t.setAttribute("y", ty); t.setAttribute("text-anchor", anchor);
    t.textContent = label;
    const title = document.createElementNS(SVG, "title");
    title.textContent = `${s.location.name} — ${s.containers.map((c) => c.name).join(", ")}`;
    g.append(title, c, t);
    const open = () => {
      if (s.containers.length && !snap.read_only) openTerminal(s.containers[0]);
      else document.querySelector(`[data-site-card="${CSS.escape(s.name)}"]`)?.scrollIntoView({ block: "nearest" });
    };
    g.addEventListener("click", open);
    g.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); open(); } });
    svg.append(g);
  }
}

function drawSites(snap) {
  const box = $("#sites");
  box.replaceChildren();
  for (const s of snap.sites) {
    const card = el("div", { class: "site-card", "data-site-card": s.name },
      el("h3", {}, s.display || s.name, " ", el("span", { class: "muted" }, `(${s.name})`)),
      el("div", { class: "loc" }, s.locator ? `locator ${s.locator}` : "agent not answering",
        s.location ? ` · ${s.location.lat.toFixed(2)}, ${s.location.lon.toFixed(2)}` : ""));
    for (const c of s.containers) {
      const labels = Object.entries(c.labels || {}).map(([k, v]) => el("span", { class: "chip" }, `${k}=${v}`));
      const btn = el("button", {
        type: "button", class: "container", "data-container": c.name,
        disabled: snap.read_only,
        "aria-label": `${snap.read_only ? "" : "Open a terminal in "}${c.name}, ${c.sir_addr}`,
        onclick: () => openTerminal(c),
      },
        el("span", { class: "name" }, c.name), " ",
        el("div", { class: "addr" }, `SIR ${c.sir_addr}`),
        c.ila_addr ? el("div", { class: "addr muted" }, `ILA ${c.ila_addr}`) : null,
        el("div", { class: "chips" },
          c.tenant ? el("span", { class: "chip tenant" }, `tenant ${c.tenant} (VNID ${c.vnid})`) : null,
          el("span", { class: "chip" }, `identity ${c.identity}`), labels));
      if (state.term && state.term.name === c.name) btn.classList.add("active");
      card.append(btn);
    }
    box.append(card);
  }
}

// ---------------------------------------------------------------- terminal
function openTerminal(c) {
  if (state.data?.snapshot.read_only) return;
  closeTerminal();
  const box = $("#term");
  box.hidden = false;
  box.replaceChildren();
  const term = new Terminal({ cursorBlink: true, fontSize: 13, convertEol: false, scrollback: 2000,
    fontFamily: '"DejaVu Sans Mono", ui-monospace, monospace', theme: { background: "#000000" } });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(box);
  const ws = new WebSocket(`ws://${location.host}/api/term/${encodeURIComponent(c.name)}`);
  ws.binaryType = "arraybuffer";
  const t = { name: c.name, sir: c.sir_addr, term, fit, ws, open: false };
  state.term = t;
  const sendSize = () => {
    try { fit.fit(); } catch (_) { /* not visible yet */ }
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ t: "r", c: term.cols, r: term.rows }));
  };
  ws.onopen = () => { t.open = true; sendSize(); term.focus(); };
  ws.onmessage = (m) => {
    if (typeof m.data === "string") {
      try { const msg = JSON.parse(m.data); if (msg.closed) term.write(`\r\n[terminal closed: ${msg.closed}]\r\n`); } catch (_) {}
      return;
    }
    term.write(new Uint8Array(m.data));
  };
  ws.onclose = () => { t.open = false; term.write("\r\n[session ended]\r\n"); };
  const enc = new TextEncoder();
  term.onData((d) => { if (ws.readyState === WebSocket.OPEN) ws.send(enc.encode(d)); });
  term.onBinary((d) => {
    if (ws.readyState !== WebSocket.OPEN) return;
    const b = new Uint8Array(d.length);
    for (let i = 0; i < d.length; i++) b[i] = d.charCodeAt(i) & 0xff;
    ws.send(b);
  });
  // Copy and paste that do not collide with the shell's own Ctrl+C / Ctrl+V.
  term.attachCustomKeyEventHandler((e) => {
    if (e.type !== "keydown" || !e.ctrlKey || !e.shiftKey) return true;
    if (e.code === "KeyC") { const s = term.getSelection(); if (s) navigator.clipboard?.writeText(s); return false; }
    // The browser's own paste (Ctrl+Shift+V is "paste" too) reaches xterm as a paste event;
    // only keep xterm from sending ^V.
    if (e.code === "KeyV") return false;
    return true;
  });
  t.resizeObserver = new ResizeObserver(() => sendSize());
  t.resizeObserver.observe(box);
  $("#term-name").textContent = `— ${c.name} (${c.sir_addr})`;
  $("#term-close").hidden = false;
  $("#term-help").hidden = true;
  document.querySelectorAll(".container").forEach((b) => b.classList.toggle("active", b.dataset.container === c.name));
  state.selectedFlow = null;
}

function closeTerminal() {
  const t = state.term;
  if (!t) return;
  t.resizeObserver?.disconnect();
  t.ws.onclose = null;
  t.ws.close();
  t.term.dispose();
  state.term = null;
  $("#term").hidden = true;
  $("#term-name").textContent = "— choose a container";
  $("#term-close").hidden = true;
  $("#term-help").hidden = false;
  document.querySelectorAll(".container.active").forEach((b) => b.classList.remove("active"));
}
$("#term-close").addEventListener("click", closeTerminal);
$("#term").hidden = true;

// ---------------------------------------------------------------- steps and tables
const flowId = (f) => `${f.src}|${f.dst}|${f.proto}`;
const who = (name, addr) => name ? `${name} (${addr})` : addr;

function currentFlow(data) {
  const flows = data.flows || [];
  if (state.selectedFlow) {
    const f = flows.find((f) => flowId(f) === state.selectedFlow);
    if (f) return f;
  }
  // The visitor's own flow: the newest one leaving the container whose terminal is open.
  if (state.term) return flows.find((f) => f.src === state.term.sir && f.steps.length) || null;
  return flows.find((f) => f.steps.length) || null;
}

const KIND = {
  sent: "sent", policy: "policy", "from-container": "from-container", route: "locator route",
  "from-wire": "from-wire", delivered: "delivered", dropped: "dropped",
};

function drawSteps(data) {
  const f = currentFlow(data);
  const list = $("#steps");
  if (!f) {
    $("#steps-flow").textContent = state.term ? `— nothing sent from ${state.term.name} yet` : "";
    return;
  }
  $("#steps-flow").textContent = `— ${f.proto_name} ${f.src_name || f.src} → ${f.dst_name || f.dst}`;
  const items = f.steps.map((s) =>
    el("li", { class: `step ${s.kind}`, "data-kind": s.kind, "data-host": s.host, "data-src": s.src,
      "data-dst": s.dst, "data-dst-after": s.dst_after || undefined, "data-csum": s.csum_mode || undefined },
      el("span", { class: "kind" }, KIND[s.kind] || s.kind), " ",
      el("span", { class: "host" }, `on ${s.host}`),
      s.dst_after
        ? el("span", { class: "rewrite addr" }, s.dst, el("span", { class: "arrow" }, "→"), s.dst_after,
          s.csum_mode ? el("span", { class: "muted" }, ` (${s.csum_mode})`) : null)
        : el("span", { class: "rewrite addr" }, s.src, el("span", { class: "arrow" }, "→"), s.dst),
      el("div", { class: "muted" }, s.note)));
  list.replaceChildren(...items);
}

function table(headers, rows) {
  return el("table", {}, el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows));
}

function drawTables(data) {
  // Redrawn rows must not steal keyboard focus: remember which flow row had it.
  const focused = document.activeElement?.dataset?.flowId;
  drawTablesNow(data);
  if (focused) document.querySelector(`tr.flow[data-flow-id="${CSS.escape(focused)}"]`)?.focus();
}

function drawTablesNow(data) {
  const snap = data.snapshot;
  const flows = data.flows || [];
  $("#tab-flows").replaceChildren(flows.length ? table(
    ["from", "to", "proto", "sent (SIR→ILA)", "received (ILA→SIR)", "dropped", "last verdict"],
    flows.map((f) => {
      const id = flowId(f);
      const tr = el("tr", { class: `flow${id === state.selectedFlow ? " selected" : ""}`, tabindex: 0, "data-flow-id": id,
        "aria-label": `Show the steps of ${f.src_name || f.src} to ${f.dst_name || f.dst}` },
        el("td", { class: "addr" }, who(f.src_name, f.src)), el("td", { class: "addr" }, who(f.dst_name, f.dst)),
        el("td", {}, f.proto_name), el("td", {}, f.sent), el("td", {}, f.received),
        el("td", { class: f.dropped ? "drop" : "" }, f.dropped), el("td", {}, f.verdict || "—"));
      const pick = () => { state.selectedFlow = id; drawSteps(state.data); drawTables(state.data); };
      tr.addEventListener("click", pick);
      tr.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); pick(); } });
      return tr;
    })) : el("p", { class: "muted" }, "No flows yet."));
  const nHosts = snap.sites.length;
  const verdicts = data.verdicts || [];
  $("#tab-mappings").replaceChildren(table(["endpoint", "host", "SIR address", "locator", "ILA address", "checksum", "in eBPF maps"],
    snap.mappings.map((m) => el("tr", {},
      el("td", {}, m.endpoint), el("td", {}, m.host), el("td", { class: "addr" }, m.sir_addr),
      el("td", { class: "addr" }, m.locator), el("td", { class: "addr" }, m.ila_addr || "—"), el("td", {}, m.mode),
      el("td", { class: m.installed_on.length === nHosts - 1 || m.installed_on.length === nHosts ? "ok" : "drop" },
        `${m.installed_on.length}/${nHosts}`)))));
  const count = (name, verdict) => verdicts.filter((v) => v.policy === name && v.verdict === verdict).reduce((a, v) => a + v.count, 0);
  $("#tab-policies").replaceChildren(
    snap.policies.length ? table(["policy", "tenant (VNID)", "specs", "new flows allowed", "packets dropped"],
      snap.policies.map((p) => el("tr", { "data-policy": p.name }, el("td", {}, p.name), el("td", {}, p.tenant), el("td", {}, p.specs),
        el("td", { class: "ok" }, count(p.name, "allow")), el("td", { class: "drop" }, count(p.name, "drop")))))
      : el("p", { class: "muted" }, "No policies: every endpoint is in default allow (tenants stay isolated)."),
    el("h3", {}, "Verdicts since the dashboard started"),
    verdicts.length ? table(["verdict", "reason", "rule", "direction", "count"],
      verdicts.map((v) => el("tr", {}, el("td", { class: v.verdict === "drop" ? "drop" : "ok" }, v.verdict),
        el("td", {}, v.reason), el("td", {}, v.rule || (v.rule_id ?? "—")), el("td", {}, v.direction || "—"), el("td", {}, v.count))))
      : el("p", { class: "muted" }, "None yet."));
  $("#tab-hosts").replaceChildren(table(["host", "place", "locator", "agent", "counters (non-zero)"],
    snap.sites.map((s) => el("tr", {}, el("td", {}, s.name), el("td", {}, s.location?.name || s.display),
      el("td", { class: "addr" }, s.locator || "—"),
      el("td", { class: s.agent_up ? "ok" : "drop" }, s.agent_up ? "up" : "down"),
      el("td", { class: "addr" }, s.counters.filter(([, v]) => v).map(([k, v]) => `${k} ${v}`).join(" · ") || "—")))),
    ...(snap.errors.length ? [el("p", { class: "drop" }, snap.errors.join("; "))] : []));
}

for (const b of document.querySelectorAll("[role=tab]")) {
  b.addEventListener("click", () => selectTab(b.dataset.tab));
  b.addEventListener("keydown", (e) => {
    const tabs = [...document.querySelectorAll("[role=tab]")];
    const i = tabs.indexOf(b);
    if (e.key === "ArrowRight" || e.key === "ArrowLeft") {
      const n = tabs[(i + (e.key === "ArrowRight" ? 1 : tabs.length - 1)) % tabs.length];
      n.focus(); selectTab(n.dataset.tab);
    }
  });
}
function selectTab(name) {
  state.tab = name;
  for (const b of document.querySelectorAll("[role=tab]")) b.setAttribute("aria-selected", String(b.dataset.tab === name));
  for (const p of document.querySelectorAll(".tab")) p.hidden = p.id !== `tab-${name}`;
}

window.addEventListener("resize", () => { if (state.data) { state.sitesKey = ""; render(state.data); } });
connect();
