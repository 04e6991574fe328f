/* vramwatch's page: draws the document of /api/state (live, polled every second) or the one a report embeds.
 *
 * Everything the data names (process names, users, messages, advice) goes into the page as text nodes, never
 * as HTML: a process may be called anything. Charts are uPlot (vendored); memory is stacked per process, with
 * the card's used figure, its limit and the forecast line to that limit. window.vramwatch exposes the charts
 * and counters to the browser tests.
 */
(function () {
  "use strict";

  const GiB = 1024 ** 3;
  const COLORS = ["#3b6fb6", "#e08a1e", "#3c9a5f", "#b23a48", "#7a5cb0", "#2a9d9f", "#c0568f", "#8a7a2e",
                  "#5a7d9a", "#d2691e", "#4f8a3a", "#9b59b6"];
  const mode = document.body.dataset.mode || "live";
  const state = { epoch: null, seq: 0, window: 3600, gpus: {}, doc: null };
  const charts = {};
  const vw = { charts: charts, state: state, updates: 0, failures: 0, mode: mode };
  window.vramwatch = vw;

  // -- small helpers ---------------------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "style") e.style.cssText = v;
      else e.setAttribute(k, v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      e.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
    }
    return e;
  }
  function replaceChildren(node, children) {
    node.textContent = "";
    for (const c of children) node.appendChild(c);
  }
  function gib(n) { return n === null || n === undefined ? "?" : (n / GiB).toFixed(1); }
  function rate(bps) {
    if (bps === null || bps === undefined) return "";
    return (bps >= 0 ? "+" : "-") + (Math.abs(bps) / 1e6).toFixed(1) + " MB/s";
  }
  function clock(wall) { return wall ? new Date(wall * 1000).toLocaleTimeString([], { hour12: false }) : ""; }
  function dur(s) {
    if (s === null || s === undefined) return "";
    s = Math.round(s);
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
    return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
  }
  function who(p) {
    const bits = [];
    if (p.pid !== null && p.pid !== undefined) bits.push("pid " + p.pid);
    if (p.user) bits.push(p.user);
    return (p.name || "?") + (bits.length ? " (" + bits.join(", ") + ")" : "");
  }
  function colorOf(i) { return COLORS[i % COLORS.length]; }
  function gpuName(index) { return index === null || index === undefined ? "" : "GPU " + index; }

  // -- the series the page holds: merged from each answer ---------------------------------------------------

  function emptySeries() { return { t: [], used: [], total: [], procs: new Map(), torch: new Map() }; }

  function mergeSeries(s, ser) {
    const n0 = s.t.length;
    const n = ser.t.length;
    s.t = s.t.concat(ser.t);
    s.used = s.used.concat(ser.used);
    s.total = s.total.concat(ser.total);
    const listed = new Set();
    for (const p of ser.procs) {
      listed.add(p.key);
      let cur = s.procs.get(p.key);
      if (!cur) {
        cur = { key: p.key, pid: p.pid, name: p.name, user: p.user, values: new Array(n0).fill(null) };
        s.procs.set(p.key, cur);
      }
      cur.values = cur.values.concat(p.values.length === n ? p.values : new Array(n).fill(null));
    }
    // A column the daemon no longer lists has left its window: its values here are all gaps.
    for (const key of Array.from(s.procs.keys())) if (!listed.has(key)) s.procs.delete(key);
    const torchListed = new Set();
    for (const a of ser.torch) {
      const key = String(a.pid);
      torchListed.add(key);
      let cur = s.torch.get(key);
      if (!cur) {
        cur = { pid: a.pid, name: a.name, allocated: new Array(n0).fill(null), reserved: new Array(n0).fill(null) };
        s.torch.set(key, cur);
      }
      cur.allocated = cur.allocated.concat(a.allocated.length === n ? a.allocated : new Array(n).fill(null));
      cur.reserved = cur.reserved.concat(a.reserved.length === n ? a.reserved : new Array(n).fill(null));
    }
    for (const key of Array.from(s.torch.keys())) if (!torchListed.has(key)) s.torch.delete(key);
    // Keep one window of points (the daemon keeps the same).
    const last = s.t.length ? s.t[s.t.length - 1] : 0;
    let drop = 0;
    while (drop < s.t.length && s.t[drop] < last - state.window) drop++;
    if (drop) {
      s.t = s.t.slice(drop); s.used = s.used.slice(drop); s.total = s.total.slice(drop);
      for (const p of s.procs.values()) p.values = p.values.slice(drop);
      for (const a of s.torch.values()) { a.allocated = a.allocated.slice(drop); a.reserved = a.reserved.slice(drop); }
    }
  }

  function merge(doc) {
    state.window = doc.window_seconds || state.window;
    for (const g of doc.gpus) {
      let s = state.gpus[g.uuid];
      if (!s || g.series.reset) s = state.gpus[g.uuid] = emptySeries();
      mergeSeries(s, g.series);
    }
    state.seq = doc.seq;
    state.doc = doc;
  }

  // -- charts ------------------------------------------------------------------------------------------------

  function markersPlugin(getMarks) {
    // Findings as vertical lines where they were raised: the picture says when, the list below says what.
    return {
      hooks: {
        draw: [function (u) {
          const ctx = u.ctx;
          const marks = getMarks();
          ctx.save();
          ctx.font = Math.round(10 * devicePixelRatio) + "px system-ui, sans-serif";
          for (const m of marks) {
            if (m.t < u.scales.x.min || m.t > u.scales.x.max) continue;
            const x = Math.round(u.valToPos(m.t, "x", true));
            ctx.strokeStyle = m.severity === "critical" ? "#c4231b" : "#b86e00";
            ctx.lineWidth = devicePixelRatio;
            ctx.setLineDash([3 * devicePixelRatio, 3 * devicePixelRatio]);
            ctx.beginPath();
            ctx.moveTo(x, u.bbox.top);
            ctx.lineTo(x, u.bbox.top + u.bbox.height);
            ctx.stroke();
            ctx.fillStyle = ctx.strokeStyle;
            ctx.fillText(m.kind, x + 3 * devicePixelRatio, u.bbox.top + 12 * devicePixelRatio);
          }
          ctx.restore();
        }],
      },
    };
  }

  function memoryData(s, g) {
    const n = s.t.length;
    const fc = g ? g.forecast : null;
    const ahead = fc && n && fc.t[1] > s.t[n - 1] ? 1 : 0;
    const x = ahead ? s.t.concat([fc.t[1]]) : s.t.slice();
    const keys = Array.from(s.procs.keys());
    // A tick where some process is listed gets a figure in every row (0 for those below it that are absent), so
    // each band has both its edges; a tick where none is listed stays a gap.
    const any = new Array(n).fill(false);
    for (const key of keys) {
      const vals = s.procs.get(key).values;
      for (let j = 0; j < n; j++) if (vals[j] !== null && vals[j] !== undefined) any[j] = true;
    }
    const acc = new Array(n).fill(0);
    const stacked = [];
    for (const key of keys) {
      const vals = s.procs.get(key).values;
      const row = new Array(n + ahead).fill(null);
      for (let j = 0; j < n; j++) {
        const v = vals[j];
        if (v !== null && v !== undefined) acc[j] += v;
        row[j] = any[j] ? acc[j] : null;
      }
      stacked.push(row);
    }
    const lastTotal = s.total.length ? s.total[s.total.length - 1] : null;
    const used = ahead ? s.used.concat([null]) : s.used.slice();
    const total = ahead ? s.total.concat([lastTotal]) : s.total.slice();
    const forecast = new Array(n + ahead).fill(null);
    if (ahead) { forecast[n - 1] = fc.bytes[0]; forecast[n] = fc.bytes[1]; }
    // uPlot draws series in order and each fill reaches the axis: the top of the stack goes first.
    return { keys: keys, data: [x].concat(stacked.slice().reverse(), [used, total, forecast]) };
  }

  function chartWidth(node) { return Math.max(320, node.clientWidth || 800); }

  function memoryChart(node, s, g, keys) {
    const rawOf = (key) => (u, v, si, di) => {
      const p = s.procs.get(key);
      const raw = p && di !== null && di !== undefined ? p.values[di] : null;
      return raw === null || raw === undefined ? "-" : gib(raw) + " GiB";
    };
    // Stacked areas: the bottom process fills to the axis, each one above fills down to the one below it
    // (uPlot's bands), so no area is painted twice. A pid reused by a restart is told apart by its start.
    const seen = {};
    for (const key of keys) { const w = who(s.procs.get(key)); seen[w] = (seen[w] || 0) + 1; }
    const procSeries = keys.map((key, i) => {
      const p = s.procs.get(key);
      const c = colorOf(i);
      let label = who(p);
      if (seen[label] > 1) {
        const j = p.values.findIndex((v) => v !== null);
        label += j >= 0 ? " from " + clock(s.t[j]) : "";
      }
      return { label: label, stroke: c, fill: i === 0 ? c + "66" : undefined, width: 1, value: rawOf(key),
               points: { show: false } };
    }).reverse();
    const k = keys.length;
    const bands = [];
    for (let i = 1; i < k; i++) bands.push({ series: [k - i, k - i + 1], fill: colorOf(i) + "66" });
    const fmt = (u, v) => (v === null || v === undefined ? "-" : gib(v) + " GiB");
    const opts = {
      width: chartWidth(node),
      height: 320,
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max || 0, 1) * 1.05] } },
      axes: [{}, { label: "GiB", values: (u, splits) => splits.map((v) => (v / GiB).toFixed(0)), size: 50 }],
      series: [{}].concat(procSeries, [
        { label: "used (card)", stroke: "#1d2330", width: 1.5, value: fmt, points: { show: false } },
        { label: "limit", stroke: "#c4231b", width: 1.5, dash: [8, 4], value: fmt, points: { show: false } },
        { label: "forecast", stroke: "#e06c00", width: 2, dash: [4, 4], spanGaps: true, value: fmt },
      ]),
      bands: bands,
      legend: { live: true },
      plugins: [markersPlugin(() => marksFor(g ? g.uuid : null))],
    };
    return new uPlot(opts, memoryData(s, g).data, node);
  }

  function torchData(s) {
    const rows = [];
    for (const a of s.torch.values()) { rows.push(a.allocated); rows.push(a.reserved); }
    return [s.t.slice()].concat(rows);
  }

  function torchChart(node, s) {
    const series = [{}];
    let i = 0;
    for (const a of s.torch.values()) {
      const c = colorOf(i++);
      const fmt = (u, v) => (v === null || v === undefined ? "-" : gib(v) + " GiB");
      series.push({ label: "allocated, pid " + a.pid, stroke: c, width: 1.5, value: fmt, points: { show: false } });
      series.push({ label: "reserved, pid " + a.pid, stroke: c, width: 1.5, dash: [6, 3], value: fmt,
                    points: { show: false } });
    }
    return new uPlot({
      width: chartWidth(node), height: 200, series: series,
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max || 0, 1) * 1.05] } },
      axes: [{}, { label: "GiB", values: (u, splits) => splits.map((v) => (v / GiB).toFixed(1)), size: 50 }],
    }, torchData(s), node);
  }

  function marksFor(uuid) {
    const doc = state.doc;
    if (!doc) return [];
    return doc.findings
      .filter((f) => f.raised_wall && (f.gpu_uuid === uuid || f.gpu_uuid === null))
      .map((f) => ({ t: f.raised_wall, kind: f.kind, severity: f.severity }));
  }

  function drawGpu(g) {
    const s = state.gpus[g.uuid];
    let card = document.querySelector('article.gpu[data-uuid="' + CSS.escape(g.uuid) + '"]');
    if (!card) {
      card = el("article", { class: "gpu", "data-uuid": g.uuid },
        el("h2", {}), el("p", { class: "summary" }), el("div", { class: "chart" }),
        el("div", { class: "torch", hidden: "hidden" }, el("h3", {}, "PyTorch allocator (in-process agent): allocated vs reserved"),
           el("div", { class: "torch-chart" }), el("table", { class: "torch-table" })),
        el("table", { class: "procs" }));
      document.getElementById("gpus").appendChild(card);
    }
    card.querySelector("h2").textContent = g.label + (g.name ? " · " + g.name : "") + (g.up ? "" : " · DOWN");
    const summary = card.querySelector(".summary");
    const bits = [];
    if (g.used_bytes !== null && g.total_bytes) {
      bits.push(el("span", {}, gib(g.used_bytes) + " / " + gib(g.total_bytes) + " GiB used (" +
        Math.round((100 * g.used_bytes) / g.total_bytes) + "%), " + gib(g.free_bytes) + " GiB free"));
    }
    if (g.growth_bytes_per_second !== null && g.growth_bytes_per_second !== undefined) {
      bits.push(el("span", {}, " · trend " + rate(g.growth_bytes_per_second)));
    }
    if (g.eta_text) bits.push(el("span", {}, " · "), el("span", { class: "eta" }, g.eta_text));
    replaceChildren(summary, bits);

    const chartNode = card.querySelector(".chart");
    const built = memoryData(s, g);
    const sig = built.keys.join("|");
    let entry = charts[g.uuid];
    if (!entry || entry.sig !== sig) {
      if (entry) entry.plot.destroy();
      chartNode.textContent = "";
      entry = charts[g.uuid] = { sig: sig, plot: memoryChart(chartNode, s, g, built.keys), torch: null, torchSig: "" };
    } else {
      entry.plot.setData(built.data);
    }
    const torchBox = card.querySelector(".torch");
    if (s.torch.size) {
      torchBox.hidden = false;
      const tsig = Array.from(s.torch.keys()).join("|");
      if (!entry.torch || entry.torchSig !== tsig) {
        if (entry.torch) entry.torch.destroy();
        const node = card.querySelector(".torch-chart");
        node.textContent = "";
        entry.torch = torchChart(node, s);
        entry.torchSig = tsig;
      } else {
        entry.torch.setData(torchData(s));
      }
      replaceChildren(card.querySelector(".torch-table"), [
        el("tr", {}, el("th", {}, "PID"), el("th", { class: "num" }, "allocated GiB"), el("th", { class: "num" }, "reserved GiB"),
           el("th", { class: "num" }, "reserved, unused GiB"), el("th", { class: "num" }, "split blocks GiB"),
           el("th", { class: "num" }, "alloc retries")),
      ].concat(g.torch.map((a) => el("tr", {}, el("td", {}, a.pid), el("td", { class: "num" }, gib(a.allocated_bytes)),
        el("td", { class: "num" }, gib(a.reserved_bytes)),
        el("td", { class: "num" }, a.reserved_bytes !== null && a.allocated_bytes !== null ? gib(a.reserved_bytes - a.allocated_bytes) : "?"),
        el("td", { class: "num" }, gib(a.inactive_split_bytes)), el("td", { class: "num" }, a.num_alloc_retries ?? "?")))));
    } else {
      torchBox.hidden = true;
    }

    const colorByKey = {};
    built.keys.forEach((k, i) => { colorByKey[k] = colorOf(i); });
    const head = el("tr", {}, el("th", {}, "PID"), el("th", {}, "process"), el("th", {}, "user"),
      el("th", { class: "num" }, "GiB"), el("th", { class: "num" }, "card"), el("th", {}, "trend"), el("th", {}, "verdict"));
    const rows = g.processes.map((p) => {
      const share = p.used_bytes !== null && g.total_bytes ? Math.round((100 * p.used_bytes) / g.total_bytes) + "%" : "?";
      let name = p.name || "?";
      if (p.root_name && p.root_pid !== null && p.root_pid !== p.pid) name += " <" + p.root_name + ":" + p.root_pid + ">";
      return el("tr", {},
        el("td", {}, el("span", { class: "swatch", style: "background:" + (colorByKey[p.key] || "#999") }), String(p.pid)),
        el("td", {}, name), el("td", {}, p.user || "?"), el("td", { class: "num" }, gib(p.used_bytes)),
        el("td", { class: "num" }, share), el("td", {}, rate(p.growth_bytes_per_second)), el("td", {}, p.verdict || ""));
    });
    replaceChildren(card.querySelector("table.procs"),
      rows.length ? [head].concat(rows) : [el("tr", {}, el("td", { class: "empty" }, "No process on this GPU."))]);
  }

  // -- lists -------------------------------------------------------------------------------------------------

  function findingNode(f, opts) {
    const where = [gpuName(f.gpu), f.raised_wall ? "raised " + clock(f.raised_wall) : ""];
    if (f.cleared_wall) where.push("cleared " + clock(f.cleared_wall));
    const cls = "finding " + f.severity + (f.cleared_wall && !(opts && opts.active) ? " cleared" : "");
    return el("div", { class: cls, "data-kind": f.kind },
      el("div", { class: "head" }, el("span", { class: "sev" }, f.severity), " ", f.kind, " · ",
         where.filter(Boolean).join(" · ")),
      el("p", { class: "msg" }, f.message),
      f.advice && f.advice.length ? el("ul", { class: "advice" }, f.advice.map((a) => el("li", {}, a))) : null);
  }

  function drawLists(doc) {
    const active = document.getElementById("active");
    replaceChildren(active, doc.active.length ? doc.active.map((f) => findingNode(f, { active: true }))
      : [el("p", { class: "empty" }, mode === "report" ? "None at the end of the recording."
        : "None: nothing is wrong at the moment.")]);
    const findings = document.getElementById("findings");
    replaceChildren(findings, doc.findings.length ? doc.findings.map((f) => findingNode(f))
      : [el("p", { class: "empty" }, "None.")]);
    document.getElementById("findings-title").textContent = mode === "report"
      ? "Findings raised (" + doc.findings.length + ")" : "Findings raised (last hour, newest first)";

    const pm = document.getElementById("postmortem");
    document.getElementById("postmortem-section").hidden = !doc.postmortem.length;
    replaceChildren(pm, doc.postmortem.map((d) => {
      const ended = d.exit_signal ? "killed by signal " + d.exit_signal
        : d.exit_code !== null && d.exit_code !== undefined ? "exit status " + d.exit_code : "exit status unknown";
      const verdict = d.finding ? (d.finding.kind === "oom" ? "ran out of memory (the agent saw the OOM)"
        : "probably ran out of memory") : "no sign of an out-of-memory death";
      return el("div", { class: "left" + (d.finding ? " oom" : ""), "data-pid": d.pid },
        el("div", {}, el("strong", {}, who(d)), " left " + gpuName(d.gpu) + " at " + clock(d.wall) + " after " +
           dur(d.wall - d.first_wall) + ": peak " + gib(d.peak_bytes) + " GiB, last " + gib(d.last_bytes) + " GiB; " +
           ended + "; " + verdict + "."),
        d.finding ? findingNode(d.finding) : null);
    }));

    const verdicts = document.getElementById("verdicts");
    document.getElementById("verdicts-section").hidden = !doc.verdicts.length;
    replaceChildren(verdicts, doc.verdicts.map((v) => el("li", {}, gpuName(v.gpu) + ": " + v.verdict)));
  }

  function drawHeader(doc) {
    const b = doc.backend || {};
    const sim = document.getElementById("simulated");
    // A report is of a recording by definition: only a simulated origin needs saying there.
    const kind = mode === "report" && b.backend === "replay" ? b.recorded_backend : b.backend;
    if (kind === "simulated") {
      sim.hidden = false;
      sim.textContent = "SIMULATED GPU: scenario '" + (b.scenario || "?") + "'. No real GPU is being watched.";
    } else if (kind === "replay") {
      sim.hidden = false;
      sim.textContent = "REPLAY of a recording" + (b.recorded_backend === "simulated" ? " of a SIMULATED GPU" : "") +
        (b.source ? " (" + b.source + ")" : "") + ": not live data.";
    } else {
      sim.hidden = true;
    }
    const src = document.getElementById("source");
    if (mode === "report") {
      const r = doc.report || {};
      src.textContent = "report of " + (r.source || "a trace") + (r.host ? " recorded on " + r.host : "") +
        (r.started ? ", " + new Date(r.started * 1000).toLocaleString() : "") + (r.duration_seconds ? ", " + dur(r.duration_seconds) : "");
    } else {
      src.textContent = (b.host ? b.host + " · " : "") + (doc.wall ? "last tick " + clock(doc.wall) : "");
    }
  }

  function draw(doc) {
    drawHeader(doc);
    for (const g of doc.gpus) drawGpu(g);
    drawLists(doc);
    vw.updates++;
  }

  function setConn(text, cls) {
    const c = document.getElementById("conn");
    c.textContent = text;
    c.className = "conn " + cls;
  }

  // -- live: poll every second, survive the daemon restarting ------------------------------------------------

  function resetAll() {
    for (const [uuid, entry] of Object.entries(charts)) {
      entry.plot.destroy();
      if (entry.torch) entry.torch.destroy();
      delete charts[uuid];
    }
    document.getElementById("gpus").textContent = "";
    state.gpus = {};
    state.seq = 0;
  }

  async function poll() {
    let next = 1000;
    try {
      const r = await fetch("api/state?since=" + state.seq, { cache: "no-store" });
      if (!r.ok) throw new Error("HTTP " + r.status);
      const doc = await r.json();
      if (state.epoch !== null && doc.epoch !== state.epoch) {
        // Another daemon (a restart): its points are not a continuation of ours. Start over at once.
        resetAll();
        state.epoch = doc.epoch;
        next = 0;
      } else {
        state.epoch = doc.epoch;
        merge(doc);
        draw(doc);
        setConn(doc.up ? "live" : "live · GPU library unavailable", "live");
      }
    } catch (e) {
      vw.failures++;
      setConn("reconnecting…", "reconnecting");
    }
    setTimeout(poll, next);
  }

  window.addEventListener("resize", () => {
    for (const [uuid, entry] of Object.entries(charts)) {
      const node = document.querySelector('article.gpu[data-uuid="' + CSS.escape(uuid) + '"] .chart');
      if (node) entry.plot.setSize({ width: chartWidth(node), height: 320 });
      const tnode = document.querySelector('article.gpu[data-uuid="' + CSS.escape(uuid) + '"] .torch-chart');
      if (tnode && entry.torch) entry.torch.setSize({ width: chartWidth(tnode), height: 200 });
    }
  });

  if (mode === "report") {
    const doc = JSON.parse(document.getElementById("vw-data").textContent);
    document.getElementById("conn").hidden = true;
    document.getElementById("active-section").querySelector("h2").textContent = "Active at the end of the recording";
    merge(doc);
    draw(doc);
  } else {
    poll();
  }
})();
