// The asyncipc dashboard: reads /dashboard/events (one JSON snapshot per event) and
// fills the tables. Every value a client controls (names, subjects) goes in through
// textContent, never as HTML; the page's Content-Security-Policy forbids inline script.
"use strict";

(function () {
  const params = new URLSearchParams(window.location.search);
  const query = new URLSearchParams();
  for (const key of ["access_token", "interval"]) {
    if (params.has(key)) query.set(key, params.get(key));
  }
  const source = "dashboard/events" + (query.toString() ? "?" + query.toString() : "");

  function $(id) { return document.getElementById(id); }

  function text(id, value) { $(id).textContent = String(value); }

  function num(n) {
    if (typeof n !== "number") return "–";
    if (Math.abs(n) >= 1e9) return (n / 1e9).toFixed(1) + "G";
    if (Math.abs(n) >= 1e6) return (n / 1e6).toFixed(1) + "M";
    if (Math.abs(n) >= 1e4) return (n / 1e3).toFixed(1) + "k";
    return Number.isInteger(n) ? String(n) : n.toFixed(1);
  }

  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i === 0 ? String(n) : n.toFixed(1)) + " " + units[i];
  }

  function cell(value, numeric) {
    const td = document.createElement("td");
    td.textContent = value === null || value === undefined ? "" : String(value);
    if (numeric) td.className = "num";
    return td;
  }

  function fill(tableId, rows, columns, empty, decorate) {
    const body = $(tableId).querySelector("tbody");
    const fresh = document.createElement("tbody");
    if (rows.length === 0) {
      const tr = document.createElement("tr");
      tr.className = "empty";
      const td = cell(empty);
      td.colSpan = columns.length;
      tr.appendChild(td);
      fresh.appendChild(tr);
    }
    for (const row of rows) {
      const tr = document.createElement("tr");
      for (const [get, numeric] of columns) tr.appendChild(cell(get(row), numeric));
      if (decorate) decorate(tr, row);
      fresh.appendChild(tr);
    }
    body.replaceWith(fresh);
  }

  function peer(c) {
    if (c.ip !== undefined) return c.ip + ":" + c.port;
    // A Unix socket's address is the broker's own path: who is there (pid, uid) says more.
    const parts = [];
    if (c.pid !== undefined) parts.push("pid " + c.pid);
    if (c.uid !== undefined) parts.push("uid " + c.uid);
    if (parts.length === 0 && c.address) parts.push(c.address);
    return parts.join(" ");
  }

  function render(snap) {
    const v = snap.varz;
    text("server-id", v.server_id);
    text("v-version", v.version);
    text("v-uptime", v.uptime);
    text("v-connections", v.connections);
    text("v-subscriptions", v.subscriptions);
    text("v-in-rate", num(v.in_msgs_rate));
    text("v-out-rate", num(v.out_msgs_rate));
    text("v-slow", v.slow_consumers);
    text("v-dropped", v.dropped);
    text("v-mem", bytes(v.mem));
    text("v-cpu", v.cpu.toFixed(1) + " %");

    fill("connections", snap.connz.connections, [
      [(c) => c.cid, true], [(c) => c.name], [(c) => c.transport], [peer],
      [(c) => num(c.in_msgs), true], [(c) => num(c.out_msgs), true],
      [(c) => num(c.in_msgs_rate), true], [(c) => num(c.out_msgs_rate), true],
      [(c) => bytes(c.pending_bytes), true], [(c) => c.subscriptions, true],
    ], "no connections", (tr, c) => {
      tr.dataset.cid = String(c.cid);
      if (c.write_blocked) tr.className = "slow";
    });

    fill("subjects", snap.subjectz.subjects, [
      [(s) => s.subject], [(s) => num(s.msgs), true], [(s) => num(s.msgs_rate), true],
    ], "no messages yet", (tr, s) => { tr.dataset.subject = s.subject; });

    const slow = [];
    for (const s of snap.subsz.subscriptions_list || []) {
      if (s.slow || s.dropped > 0) {
        slow.push({ cid: s.cid, name: s.name, subject: s.subject, overflow: s.overflow,
                    state: s.slow ? "behind" : "dropped", pending: s.pending_bytes,
                    dropped: s.dropped });
      }
    }
    for (const s of snap.subsz.recent_slow_consumers || []) {
      slow.push({ cid: s.cid, name: s.name, subject: s.subject, overflow: "error",
                  state: "cut off " + s.time, pending: 0, dropped: null });
    }
    fill("slow", slow, [
      [(s) => s.cid, true], [(s) => s.name], [(s) => s.subject], [(s) => s.overflow],
      [(s) => s.state], [(s) => bytes(s.pending), true],
      [(s) => (s.dropped === null ? "" : num(s.dropped)), true],
    ], "none", (tr, s) => {
      tr.dataset.cid = String(s.cid);
      tr.className = s.overflow === "error" && s.dropped === null ? "cut" : "slow";
    });

    fill("streams", snap.streamz.streams_list, [
      [(s) => s.name], [(s) => s.subjects.join(", ")], [(s) => s.storage],
      [(s) => num(s.messages), true], [(s) => bytes(s.bytes), true],
      [(s) => s.consumer_count, true],
    ], "no streams", (tr, s) => { tr.dataset.stream = s.name; });
  }

  function connect() {
    const events = new EventSource(source);
    events.addEventListener("snapshot", (e) => {
      const status = $("status");
      status.textContent = "live";
      status.className = "status up";
      render(JSON.parse(e.data));
      document.body.dataset.snapshots = String(Number(document.body.dataset.snapshots || 0) + 1);
    });
    events.addEventListener("error", () => {
      const status = $("status");
      status.textContent = "disconnected";
      status.className = "status down";
    });
  }

  connect();
})();
