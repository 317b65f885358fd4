// wsgauge live view: reads the operator's /stats/ws (same origin) and renders it.
// No framework, no external request; text from the cluster is set with textContent only.
"use strict";

(function () {
  const HISTORY_POINTS = 300;
  const COLORS = ["#0a58ca", "#b45309", "#15803d", "#be123c", "#7c3aed", "#0e7490", "#a16207", "#4b5563"];
  const history = new Map(); // "ns/name" -> [{t, topics}]
  let latest = null;
  let paused = false;
  let retry = 500;

  const $ = (id) => document.getElementById(id);

  function liveUrl() {
    const url = new URL("../stats/ws", window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    return url.toString();
  }

  function setLink(text, down) {
    const node = $("link-state");
    node.textContent = text;
    node.classList.toggle("down", Boolean(down));
  }

  function connect() {
    let socket;
    try {
      socket = new WebSocket(liveUrl());
    } catch (error) {
      setLink("Cannot open the live connection: " + error, true);
      return;
    }
    socket.addEventListener("open", () => { retry = 500; setLink("Live: updates as they happen"); });
    socket.addEventListener("message", (event) => {
      let message;
      try { message = JSON.parse(event.data); } catch (error) { return; }
      if (message.type === "cluster") {
        record(message.cluster);
        latest = message.cluster;
        if (!paused) render(latest);
      }
    });
    socket.addEventListener("close", () => {
      setLink("Disconnected; reconnecting in " + Math.round(retry / 1000 * 10) / 10 + " s", true);
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 10000);
    });
  }

  function record(cluster) {
    const now = Date.now();
    for (const entry of cluster.connectionStats || []) {
      const key = entry.namespace + "/" + entry.name;
      const points = history.get(key) || [];
      points.push({ t: now, topics: Object.assign({}, entry.topics || {}) });
      while (points.length > HISTORY_POINTS) points.shift();
      history.set(key, points);
    }
  }

  function cell(row, text, className, field) {
    const td = document.createElement("td");
    td.textContent = String(text);
    if (className) td.className = className;
    if (field) td.dataset.field = field;
    row.appendChild(td);
    return td;
  }

  function header(row, text) {
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = text;
    row.appendChild(th);
  }

  function yesNo(row, value, field, badWhen) {
    const text = value ? "yes" : "no";
    const bad = value === badWhen;
    cell(row, text, bad ? (badWhen ? "flag" : "no") : (value ? "yes" : ""), field);
  }

  function fillTopics(tbody, topics, testid) {
    tbody.replaceChildren();
    const names = Object.keys(topics || {}).sort((a, b) => topics[b] - topics[a] || a.localeCompare(b));
    for (const name of names) {
      const row = document.createElement("tr");
      row.dataset.testid = testid;
      row.dataset.topic = name;
      header(row, name);
      cell(row, topics[name], "num", "connections");
      tbody.appendChild(row);
    }
    if (names.length === 0) {
      const row = document.createElement("tr");
      cell(row, "no connections", "").colSpan = 2;
      tbody.appendChild(row);
    }
  }

  function render(cluster) {
    $("cluster-connections").textContent = String(cluster.connections);
    $("cluster-count").textContent = String((cluster.connectionStats || []).length);
    $("cluster-updated").textContent = cluster.generatedAt || "";
    fillTopics($("cluster-topics").tBodies[0], cluster.topics, "cluster-topic");
    const nodes = $("cluster-nodes").tBodies[0];
    nodes.replaceChildren();
    for (const node of cluster.nodes || []) {
      const row = document.createElement("tr");
      header(row, node.name || "(not scheduled)");
      cell(row, node.pods, "num");
      cell(row, node.connections, "num");
      nodes.appendChild(row);
    }
    const filter = $("filter").value.trim().toLowerCase();
    const container = $("entries");
    const seen = new Set();
    for (const entry of cluster.connectionStats || []) {
      const key = entry.namespace + "/" + entry.name;
      if (filter && !key.toLowerCase().includes(filter)) continue;
      seen.add(key);
      let section = container.querySelector('section[data-key="' + CSS.escape(key) + '"]');
      if (!section) {
        section = $("entry-template").content.firstElementChild.cloneNode(true);
        section.dataset.key = key;
        const id = "cs-" + key.replace(/[^a-zA-Z0-9-]/g, "-");
        section.querySelector(".entry-title").id = id;
        section.setAttribute("aria-labelledby", id);
        container.appendChild(section);
      }
      renderEntry(section, entry, key);
    }
    for (const section of Array.from(container.children)) {
      if (!seen.has(section.dataset.key)) section.remove();
    }
    $("empty").hidden = (cluster.connectionStats || []).length > 0;
  }

  function renderEntry(section, entry, key) {
    section.querySelector(".entry-title").textContent = "ConnectionStats " + key;
    const target = entry.target ? entry.target.kind + " " + entry.target.name : "no target";
    section.querySelector(".entry-target").textContent =
      "Target: " + target + (entry.specError ? " — invalid spec: " + entry.specError : "");
    const field = (name) => section.querySelector('[data-field="' + name + '"]');
    field("connections").textContent = String(entry.connections);
    field("averagePerPod").textContent = String(entry.averagePerPod);
    const desired = entry.desiredReplicas === null || entry.desiredReplicas === undefined
      ? "no autoscaling" : String(entry.desiredReplicas);
    field("replicas").textContent = entry.currentReplicas + " / " + desired;
    const pods = entry.pods || {};
    field("reporting").textContent = (pods.reporting ?? 0) + " of " + (pods.matched ?? 0);
    const regions = section.querySelectorAll(".scroll");
    regions[0].setAttribute("aria-label", "Connections per topic of " + key);
    regions[1].setAttribute("aria-label", "Pods of " + key);
    fillTopics(section.querySelector("table.topics").tBodies[0], entry.topics, "topic");
    const tbody = section.querySelector("table.pods").tBodies[0];
    tbody.replaceChildren();
    const rows = (entry.podList || []).slice().sort(
      (a, b) => (a.node || "").localeCompare(b.node || "") || a.name.localeCompare(b.name));
    let lastNode = null;
    for (const pod of rows) {
      const row = document.createElement("tr");
      row.dataset.testid = "pod";
      row.dataset.pod = pod.name;
      if (pod.node !== lastNode) row.className = "node-first";
      cell(row, pod.node !== lastNode ? (pod.node || "(not scheduled)") : "", "", "node");
      lastNode = pod.node;
      header(row, pod.name);
      cell(row, pod.connections, "num", "sockets");
      const topics = Object.keys(pod.topics || {}).sort().map((t) => t + " " + pod.topics[t]).join(", ");
      cell(row, topics || "–", "", "topics");
      yesNo(row, pod.ready, "ready", false);
      yesNo(row, pod.draining, "draining", true);
      yesNo(row, pod.overCapacity, "overCapacity", true);
      cell(row, pod.sidecar + (pod.terminating ? ", terminating" : ""), "", "sidecar");
      tbody.appendChild(row);
    }
    const omitted = section.querySelector(".omitted");
    omitted.hidden = !entry.podsOmitted;
    omitted.textContent = entry.podsOmitted ? entry.podsOmitted + " quieter pods not listed" : "";
    const conditions = section.querySelector(".conditions");
    conditions.replaceChildren();
    for (const condition of entry.conditions || []) {
      const item = document.createElement("li");
      item.textContent = condition.type + ": " + condition.status +
        (condition.reason ? " (" + condition.reason + ")" : "") +
        (condition.message ? " — " + condition.message : "");
      conditions.appendChild(item);
    }
    const events = section.querySelector(".events");
    events.replaceChildren();
    for (const event of entry.events || []) {
      const item = document.createElement("li");
      item.className = event.type;
      item.textContent = event.time + " " + event.type + " " + event.reason + ": " + event.note;
      events.appendChild(item);
    }
    events.classList.toggle("empty", !(entry.events || []).length);
    if (!(entry.events || []).length) {
      const item = document.createElement("li");
      item.textContent = "none recorded by this operator since it started";
      events.appendChild(item);
    }
    drawChart(section, key);
  }

  function drawChart(section, key) {
    const svg = section.querySelector(".chart-svg");
    const legend = section.querySelector(".legend");
    const points = history.get(key) || [];
    const topics = new Set();
    for (const point of points) for (const topic of Object.keys(point.topics)) topics.add(topic);
    const names = Array.from(topics).sort();
    let max = 1;
    for (const point of points) for (const name of names) max = Math.max(max, point.topics[name] || 0);
    const width = 600, height = 180, pad = 6;
    const t0 = points.length ? points[0].t : 0;
    const span = points.length > 1 ? points[points.length - 1].t - t0 : 1;
    const ns = "http://www.w3.org/2000/svg";
    svg.replaceChildren();
    const title = document.createElementNS(ns, "title");
    const current = points.length ? points[points.length - 1].topics : {};
    title.textContent = "Connections per topic over time for " + key + ": " +
      (names.map((n) => n + " " + (current[n] || 0)).join(", ") || "no connections");
    svg.appendChild(title);
    legend.replaceChildren();
    names.forEach((name, index) => {
      const color = COLORS[index % COLORS.length];
      const path = document.createElementNS(ns, "polyline");
      const coords = points.map((point) => {
        const x = pad + (span ? (point.t - t0) / span : 1) * (width - 2 * pad);
        const y = height - pad - ((point.topics[name] || 0) / max) * (height - 2 * pad);
        return x.toFixed(1) + "," + y.toFixed(1);
      });
      path.setAttribute("points", coords.join(" "));
      path.setAttribute("fill", "none");
      path.setAttribute("stroke", color);
      path.setAttribute("stroke-width", "2");
      path.setAttribute("vector-effect", "non-scaling-stroke");
      svg.appendChild(path);
      const item = document.createElement("li");
      item.style.setProperty("--swatch", color);
      item.textContent = name + " (peak " + Math.max(...points.map((p) => p.topics[name] || 0)) + ")";
      legend.appendChild(item);
    });
  }

  $("pause").addEventListener("click", (event) => {
    paused = !paused;
    event.currentTarget.setAttribute("aria-pressed", String(paused));
    event.currentTarget.textContent = paused ? "Resume updates" : "Pause updates";
    if (!paused && latest) render(latest);
  });
  $("filter").addEventListener("input", () => { if (latest) render(latest); });
  connect();
})();
