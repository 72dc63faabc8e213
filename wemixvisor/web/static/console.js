// The wemixvisor web console. Plain JavaScript, no libraries, no build step.
// Everything that comes from a daemon or the chain is put on the page with textContent:
// never parsed as HTML.
"use strict";

(function () {
  const API = "/api/v1";
  const TOKEN_KEY = "wemixvisor.token";
  const MAX_EVENTS = 80;
  const MAX_BLOCK_TIMES = 60;
  const SAGA_TOPICS = ["upgrade.started", "upgrade.step", "upgrade.completed", "upgrade.failed",
    "upgrade.rolled_back", "upgrade.waiting_for_network", "upgrade.awaiting_operator"];

  const state = {
    token: null,
    daemons: [],
    selected: null,
    status: {},          // daemon id -> last status (or {error})
    upgrades: {},        // daemon id -> last list_upgrades reply
    backups: {},         // daemon id -> last backup list
    heads: [],           // [{height, at}] of the selected daemon
    blockTimes: [],      // seconds between blocks, newest last
    stream: null,        // AbortController of the event stream
    saga: { name: null, steps: [] },
    lastHeightEvent: 0,  // Date.now() of the last height.observed event
    slots: {},           // daemon id -> {plan name -> {slot, window} last seen}: kept once done
    validatorIndex: {},  // daemon id -> its validator index, once a slot told it
  };

  const $ = (id) => document.getElementById(id);

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function show(message, isError) {
    const box = $("message");
    box.textContent = message;
    box.className = isError ? "error" : "ok";
  }

  // Token: from the URL fragment (then the address bar is cleared), else asked once.
  function takeToken() {
    const hash = new URLSearchParams(location.hash.slice(1));
    const fromUrl = hash.get("token");
    if (fromUrl) {
      sessionStorage.setItem(TOKEN_KEY, fromUrl);
      history.replaceState(null, "", location.pathname + location.search);
    }
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function askToken(reason) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    $("console").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = reason || "";
    $("connection").textContent = "no token";
  }

  // API.
  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(method, path, body) {
    const options = { method, headers: { Authorization: "Bearer " + state.token },
      cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(API + path, options);
    let reply = null;
    try { reply = await response.json(); } catch (e) { reply = null; }
    if (response.status === 401) {
      askToken("The token was refused.");
      throw new ApiError(401, "unauthorized", "the token was refused");
    }
    if (!response.ok) {
      const error = (reply && reply.error) || { code: "http_" + response.status, message: "" };
      throw new ApiError(response.status, error.code, error.message);
    }
    return reply;
  }

  const daemonPath = (id, path) => "/daemons/" + encodeURIComponent(id) + path;

  // Numbers.
  function averageBlockTime() {
    const times = state.blockTimes.slice(-20);
    if (!times.length) return null;
    return times.reduce((a, b) => a + b, 0) / times.length;
  }

  function duration(seconds) {
    if (seconds === null || !isFinite(seconds)) return "unknown";
    const s = Math.max(0, Math.round(seconds));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    return (h ? h + "h " : "") + (h || m ? m + "m " : "") + r + "s";
  }

  function bytes(n) {
    if (typeof n !== "number") return "unknown";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i ? n.toFixed(1) : n) + " " + units[i];
  }

  function headOf(status) {
    return status && status.head && typeof status.head.height === "number" ? status.head.height : null;
  }

  // The block time the daemon measured, else the one this page measured from the events.
  function blockTime(id) {
    const status = state.status[id];
    const measured = status && status.head ? status.head.block_time : null;
    return typeof measured === "number" && measured > 0 ? measured : averageBlockTime();
  }

  function formatEta(blocks, seconds) {
    if (typeof blocks !== "number") return "unknown";
    if (blocks <= 0) return "now";
    return blocks + " blocks, ETA " + (typeof seconds === "number" ? duration(seconds) : "unknown");
  }

  // Until the switch after block H-1 (H is the new binary's first block).
  function etaText(height, head) {
    if (head === null) return "unknown";
    const left = height - 1 - head;
    if (left <= 0) return "now";
    const pace = blockTime(state.selected);
    return formatEta(left, pace === null ? null : left * pace);
  }

  // A plan's ETA as its daemon computed it (blocks to H-1 or to its slot, times the measured
  // block time); a daemon that sends none gets the page's own estimate.
  function planEta(plan, head) {
    if (plan.eta_blocks !== undefined) return formatEta(plan.eta_blocks, plan.eta_seconds);
    return etaText(plan.height, head);
  }

  function slotText(slot) {
    if (!slot || typeof slot.slot_start !== "number") return "not taken yet";
    return (slot.slot_index + 1) + "/" + slot.slot_count + ", blocks " + slot.slot_start + "-" +
      slot.slot_end + (slot.shared ? " (shared)" : "") +
      (slot.validator === false ? " (by address hash)" : "");
  }

  function verdictText(slot) {
    if (!slot) return "surveyed when the window opens";
    switch (slot.verdict) {
      case "before_slot": return "before its slot";
      case "go": return "its turn: switching";
      case "waiting_for_quorum":
        return "waiting for quorum: " + slot.active + " other validators up, " + slot.needed +
          " needed";
      case "closed": return "window closed → switches at H−1" + (slot.reason ? " (" + slot.reason + ")" : "");
      case "surveying": return "surveying the validators";
      default: return String(slot.verdict);
    }
  }

  function validatorText(id, status) {
    const chain = status && status.chain;
    if (!chain || chain.wbft !== true) return chain && chain.wbft === false ? "not WBFT" : "unknown";
    const index = state.validatorIndex[id];
    const role = chain.is_validator === true ? "validator" + (index !== undefined ? " #" + index : "")
      : chain.is_validator === false ? "not a validator" : "unknown";
    return role + " " + (chain.node_address || "");
  }

  // Rows of the slots table for one daemon: its window plans waiting, switching or done.
  function slotRows(id, status) {
    const seen = state.slots[id] || (state.slots[id] = {});
    const rows = [];
    const plans = status.plans;
    if (!plans) return rows;
    for (const plan of plans.pending || []) {
      if (plan.window === null || plan.window === undefined) continue;
      if (plan.slot) {
        seen[plan.name] = { slot: plan.slot, window: plan.window };
        if (plan.slot.validator === true && typeof plan.slot.slot_index === "number") {
          state.validatorIndex[id] = plan.slot.slot_index;
        }
      }
      rows.push([plan.name + " @ " + plan.height + " (window " + plan.window + ")",
        slotText(plan.slot), verdictText(plan.slot), formatEta(plan.eta_blocks, plan.eta_seconds)]);
    }
    const running = plans.in_progress;
    const known = running && seen[running.name];
    if (known) {
      rows.push([running.name + " @ " + running.height + " (window " + known.window + ")",
        slotText(known.slot), "switching: " + running.step, "now"]);
    }
    const listing = state.upgrades[id];
    for (const plan of (listing && listing.plans) || []) {
      if (plan.mode !== "window" || (running && running.name === plan.name)) continue;
      if (!["completed", "failed", "rolled_back"].includes(plan.status)) continue;
      rows.push([plan.name + " @ " + plan.height + " (window " + plan.window + ")",
        slotText(seen[plan.name] && seen[plan.name].slot),
        plan.status === "completed" ? "done" : plan.status, "-"]);
    }
    return rows;
  }

  function quorumText(status) {
    const chain = status && status.chain;
    if (!chain || chain.wbft === null || chain.wbft === undefined) return "unknown";
    if (chain.wbft === false) return "not a WBFT chain";
    if (typeof chain.active_validators !== "number" || typeof chain.quorum !== "number") {
      return "unknown";
    }
    const safe = chain.active_validators - 1 >= chain.quorum;
    return (safe ? "safe" : "AT RISK") + " (" + chain.active_validators + " active, quorum " +
      chain.quorum + ")";
  }

  // Readiness of a plan: what the daemon says, "unknown" where it says nothing.
  const READINESS = [
    ["binary_staged", "binary staged"],
    ["checksum_verified", "checksum verified"],
    ["backup_prestaged", "backup pre-staged"],
    ["hooks_present", "hooks present"],
    ["preflight_ok", "preflight passed"],
  ];

  function readinessOf(plan, status, daemon) {
    const known = Object.assign({}, plan.readiness || {});
    // The backup the daemon pre-stages for a plan is listed with the plan's name.
    const backups = state.backups[daemon || state.selected];
    const staged = backups && backups.find((b) => b.plan === plan.name);
    if (staged && known.backup_prestaged === undefined) {
      known.backup_prestaged = staged.complete ? true : "in progress";
    }
    // A binary put in place by hand was never downloaded: there was no checksum to check.
    if (known.binary_staged === true && known.checksum_verified === null) {
      known.checksum_verified = "not downloaded";
    }
    const parts = READINESS.map(([key, label]) => {
      const value = known[key];
      return [label, value === true ? "yes" : value === false ? "no"
        : typeof value === "string" ? value : "unknown"];
    });
    parts.push(["quorum", quorumText(status)]);
    return parts;
  }

  function readyForNext(status, upgrades, daemon) {
    const plans = (upgrades && upgrades.plans) || [];
    const next = plans.find((p) => p.status === "pending" || p.status === "in_file");
    if (!next) return { plan: "none", ready: "-" };
    const node = status && status.node ? status.node.state : null;
    const parts = readinessOf(next, status, daemon);
    const no = parts.filter(([, v]) => v === "no" || v.startsWith("AT RISK"));
    const unknown = parts.filter(([, v]) => v !== "yes" && !v.startsWith("safe") &&
      v !== "not a WBFT chain" && v !== "not downloaded");
    let ready = "yes";
    if (node !== "RUNNING" || no.length) ready = "no";
    else if (unknown.length) ready = "unknown (" + unknown.map(([k]) => k).join(", ") + ")";
    return { plan: next.name + " @ " + next.height, ready };
  }

  // Rendering.
  function renderFleet() {
    const body = $("fleet").querySelector("tbody");
    body.replaceChildren();
    for (const daemon of state.daemons) {
      const status = state.status[daemon.id];
      const row = el("tr");
      row.dataset.daemon = daemon.id;
      const idCell = el("td");
      const link = el("button", daemon.id, "small");
      link.type = "button";
      link.addEventListener("click", () => select(daemon.id));
      idCell.append(link);
      row.append(idCell);
      if (!status || status.error) {
        row.append(el("td", status ? status.error : "…", "bad"), el("td"), el("td"), el("td"),
          el("td"), el("td"));
      } else {
        slotRows(daemon.id, status);  // learns the validator index from a slot
        row.append(
          el("td", status.node.state, "state-" + status.node.state),
          el("td", headOf(status) === null ? "unknown" : headOf(status)),
          el("td", validatorText(daemon.id, status), "mono small-text"),
          el("td", status.node.version || "unknown"),
        );
        const next = readyForNext(status, state.upgrades[daemon.id], daemon.id);
        row.append(el("td", next.plan), el("td", next.ready,
          next.ready === "yes" ? "ok" : next.ready === "no" ? "bad" : "warn"));
      }
      body.append(row);
    }
    renderSlots();
  }

  function renderSlots() {
    const body = $("slots").querySelector("tbody");
    body.replaceChildren();
    for (const daemon of state.daemons) {
      const status = state.status[daemon.id];
      if (!status || status.error) continue;
      for (const cells of slotRows(daemon.id, status)) {
        const row = el("tr");
        row.dataset.daemon = daemon.id;
        row.append(el("td", daemon.id), ...cells.map((text) => el("td", text)));
        const verdict = row.children[3];
        verdict.className = cells[2] === "done" ? "ok"
          : cells[2].startsWith("waiting") || cells[2].startsWith("window closed") ? "warn" : "";
        body.append(row);
      }
    }
    $("slots-none").hidden = body.children.length > 0;
    $("slots").hidden = body.children.length === 0;
  }

  function renderNode() {
    const status = state.status[state.selected];
    $("daemon-id").textContent = state.selected || "";
    if (!status || status.error) {
      $("node-state").textContent = status ? "unreachable" : "unknown";
      $("node-state").className = "bad";
      return;
    }
    $("node-state").textContent = status.node.state;
    $("node-state").className = "state-" + status.node.state;
    const head = headOf(status);
    $("head").textContent = head === null ? "unknown" : String(head);
    const pace = blockTime(state.selected);
    $("block-time").textContent = pace === null ? "unknown" : pace.toFixed(2) + " s";
    $("node-version").textContent = (status.node.version || "unknown") +
      (status.node.target ? " (" + status.node.target + ")" : "");
    $("node-pid").textContent = status.node.pid === null ? "-" : String(status.node.pid);
    $("quorum").textContent = quorumText(status);
    const inProgress = status.plans && status.plans.in_progress;
    if (inProgress && state.saga.name !== inProgress.name) {
      state.saga = { name: inProgress.name, steps: [{ step: inProgress.step, detail: "" }] };
      renderSaga();
    }
  }

  function renderChart() {
    const svg = $("chart");
    const ns = "http://www.w3.org/2000/svg";
    svg.replaceChildren();
    const times = state.blockTimes.slice(-MAX_BLOCK_TIMES);
    const axis = document.createElementNS(ns, "line");
    axis.setAttribute("class", "axis");
    axis.setAttribute("x1", "0"); axis.setAttribute("x2", "300");
    axis.setAttribute("y1", "79"); axis.setAttribute("y2", "79");
    svg.append(axis);
    if (times.length < 2) return;
    const top = Math.max(...times) * 1.2 || 1;
    const step = 300 / (MAX_BLOCK_TIMES - 1);
    const offset = (MAX_BLOCK_TIMES - times.length) * step;
    const points = times.map((t, i) =>
      (offset + i * step).toFixed(1) + "," + (78 - (t / top) * 70).toFixed(1));
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points.join(" "));
    svg.append(line);
    $("chart-caption").textContent = "last " + times.length + " blocks: " +
      Math.min(...times).toFixed(2) + " s to " + Math.max(...times).toFixed(2) + " s";
  }

  function renderPlans() {
    const reply = state.upgrades[state.selected];
    const status = state.status[state.selected];
    const body = $("plans").querySelector("tbody");
    body.replaceChildren();
    if (!reply) return;
    const head = headOf(status) !== null ? headOf(status) : reply.head;
    for (const plan of reply.plans) {
      const row = el("tr");
      row.dataset.plan = plan.name;
      const waiting = plan.status === "pending" || plan.status === "in_file";
      const nameCell = el("td", plan.name);
      if (plan.info !== undefined) {
        nameCell.append(el("div", typeof plan.info === "string" ? plan.info
          : JSON.stringify(plan.info), "muted info"));
      }
      row.append(nameCell, el("td", plan.height),
        el("td", plan.status + (plan.result ? " — " + plan.result : "")),
        el("td", waiting ? planEta(plan, head) : "-"));
      const readiness = el("td");
      if (waiting) {
        for (const [label, value] of readinessOf(plan, status)) {
          readiness.append(el("div", label + ": " + value,
            value === "yes" || value.startsWith("safe") ? "ok"
              : value === "no" || value.startsWith("AT RISK") ? "bad" : "muted"));
        }
      }
      row.append(readiness);
      const actions = el("td");
      if (plan.status === "pending" || plan.status === "in_file") {
        const cancel = el("button", "cancel…", "small");
        cancel.type = "button";
        cancel.dataset.cancel = plan.name;
        cancel.addEventListener("click", () => confirmThen(
          "Cancel upgrade " + plan.name + " at height " + plan.height + "?",
          () => act("DELETE", "/upgrades/" + encodeURIComponent(plan.name), undefined,
            "cancelled " + plan.name)));
        actions.append(cancel);
      }
      row.append(actions);
      body.append(row);
    }
  }

  function renderBackups(reply) {
    const body = $("backups").querySelector("tbody");
    body.replaceChildren();
    for (const backup of reply.backups) {
      const row = el("tr");
      row.dataset.backup = backup.id;
      row.append(el("td", backup.id), el("td", backup.label), el("td", bytes(backup.total_bytes)),
        el("td", backup.complete ? "yes" : "no", backup.complete ? "ok" : "warn"));
      const actions = el("td");
      if (backup.complete) {
        const restore = el("button", "restore…", "small");
        restore.type = "button";
        restore.addEventListener("click", () => confirmThen(
          "Restore backup " + backup.id + "? The node is stopped, its data replaced, restarted.",
          () => act("POST", "/backups/" + encodeURIComponent(backup.id) + "/restore", undefined,
            "restore of " + backup.id + " started")));
        actions.append(restore);
      }
      row.append(actions);
      body.append(row);
    }
  }

  function renderSaga() {
    $("saga-title").textContent = state.saga.name ? "upgrade " + state.saga.name : "none";
    const list = $("saga");
    list.replaceChildren();
    for (const step of state.saga.steps) {
      const item = el("li", step.step + (step.detail ? " — " + step.detail : ""), step.kind || "");
      item.dataset.step = step.step;
      list.append(item);
    }
  }

  function addEvent(event) {
    const list = $("events");
    const when = new Date(event.ts * 1000).toLocaleTimeString();
    const fields = Object.entries(event)
      .filter(([k]) => !["topic", "ts", "run_id", "seq"].includes(k))
      .map(([k, v]) => k + "=" + (typeof v === "string" ? v : JSON.stringify(v)));
    const item = el("li", when + " " + event.topic + " " + fields.join(" "));
    item.dataset.topic = event.topic;
    list.prepend(item);
    while (list.children.length > MAX_EVENTS) list.lastChild.remove();
  }

  // Events of the selected daemon: fetch() streaming, so the token stays in a header.
  function onEvent(event) {
    addEvent(event);
    if (event.topic === "height.observed" && typeof event.height === "number") {
      if (Date.now() - state.lastHeightEvent > 5000) state.heads = [];  // polled heads out
      state.lastHeightEvent = Date.now();
      noteHead(event.height, event.ts);
      const status = state.status[state.selected];
      if (status && status.head) status.head.height = Math.max(status.head.height || 0, event.height);
      renderNode();
    } else if (SAGA_TOPICS.includes(event.topic)) {
      if (event.topic === "upgrade.started") state.saga = { name: event.name, steps: [] };
      if (state.saga.name !== event.name) state.saga = { name: event.name, steps: [] };
      const step = event.topic === "upgrade.step" ? event.step : event.topic.split(".")[1];
      const kind = event.topic === "upgrade.completed" ? "done"
        : ["upgrade.failed", "upgrade.rolled_back"].includes(event.topic) ? "failed" : "";
      const detail = event.detail || event.reason || (event.version ? "version " + event.version : "");
      state.saga.steps.push({ step, detail, kind });
      renderSaga();
    }
    if (event.topic.startsWith("upgrade.") || event.topic.startsWith("plan.")) refreshPlans();
    if (event.topic.startsWith("backup.")) refreshBackups();
  }

  function noteHead(height, at) {
    const last = state.heads[state.heads.length - 1];
    if (last && height <= last.height) return;
    if (last && at > last.at) {
      state.blockTimes.push((at - last.at) / (height - last.height));
      state.blockTimes = state.blockTimes.slice(-MAX_BLOCK_TIMES);
      renderChart();
    }
    state.heads.push({ height, at });
    state.heads = state.heads.slice(-5);
  }

  async function follow(id) {
    const controller = new AbortController();
    state.stream = controller;
    let lastId = null;
    while (!controller.signal.aborted && state.token) {
      try {
        const headers = { Authorization: "Bearer " + state.token, Accept: "text/event-stream" };
        if (lastId) headers["Last-Event-ID"] = lastId;
        const response = await fetch(API + daemonPath(id, "/events"),
          { headers, cache: "no-store", credentials: "omit", signal: controller.signal });
        if (response.status === 401) { askToken("The token was refused."); return; }
        if (!response.ok || !response.body) throw new Error("events: HTTP " + response.status);
        $("connection").textContent = "live";
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            let data = "", id = null, kind = "message";
            for (const line of block.split("\n")) {
              if (line.startsWith("data: ")) data += line.slice(6);
              else if (line.startsWith("id: ")) id = line.slice(4);
              else if (line.startsWith("event: ")) kind = line.slice(7);
            }
            if (!data) continue;
            if (id) lastId = id;
            const parsed = JSON.parse(data);
            if (kind === "error") show("events: " + parsed.error.message, true);
            else onEvent(parsed);
          }
        }
      } catch (e) {
        if (controller.signal.aborted) return;
      }
      $("connection").textContent = "reconnecting…";
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }

  // Refreshing.
  async function refreshStatus(id) {
    try {
      state.status[id] = await api("GET", daemonPath(id, "/status"));
      // Block times come from height.observed events (the daemon's clock); polling is the
      // fallback while no such event arrives (it only sees heads once a second).
      if (id === state.selected && Date.now() - state.lastHeightEvent > 5000) {
        const head = headOf(state.status[id]);
        if (head !== null) noteHead(head, Date.now() / 1000);
      }
    } catch (e) {
      state.status[id] = { error: e.code === "unreachable" ? "unreachable" : e.message };
    }
  }

  async function refreshUpgrades(id) {
    try { state.upgrades[id] = await api("GET", daemonPath(id, "/upgrades")); } catch (e) { /* shown by status */ }
  }

  async function refreshPlans() {
    if (!state.selected) return;
    await refreshUpgrades(state.selected);
    renderPlans();
    renderFleet();
  }

  async function refreshBackups() {
    if (!state.selected) return;
    const id = state.selected;
    try {
      const reply = await api("GET", daemonPath(id, "/backups"));
      state.backups[id] = reply.backups;
      renderBackups(reply);
    } catch (e) { /* shown by status */ }
  }

  async function refreshLogs() {
    if (!state.selected) return;
    try {
      const reply = await api("GET", daemonPath(state.selected, "/logs?n=60"));
      const logs = $("logs");
      const atEnd = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
      logs.textContent = reply.exists ? reply.lines.join("\n") : "no node log yet";
      if (atEnd) logs.scrollTop = logs.scrollHeight;  // follow the tail unless scrolled up
    } catch (e) { /* shown by status */ }
  }

  async function tick() {
    if (!state.token) return;
    await Promise.all(state.daemons.map((d) => refreshStatus(d.id)));
    renderFleet();
    renderNode();
    renderPlans();
  }

  async function slowTick() {
    if (!state.token) return;
    await Promise.all(state.daemons.map((d) => refreshUpgrades(d.id)));
    renderPlans();
    renderFleet();
    await Promise.all([refreshBackups(), refreshLogs()]);
  }

  function select(id) {
    if (state.stream) state.stream.abort();
    state.selected = id;
    state.heads = [];
    state.blockTimes = [];
    state.saga = { name: null, steps: [] };
    $("events").replaceChildren();
    renderSaga();
    renderChart();
    follow(id);
    tick();
    slowTick();
  }

  // Actions.
  function confirmThen(text, action) {
    $("confirm-text").textContent = text;
    $("confirm").hidden = false;
    const yes = $("confirm-yes"), no = $("confirm-no");
    const close = () => { $("confirm").hidden = true; yes.onclick = null; no.onclick = null; };
    yes.onclick = () => { close(); action(); };
    no.onclick = close;
  }

  async function act(method, path, body, done) {
    try {
      await api(method, daemonPath(state.selected, path), body);
      show(done, false);
    } catch (e) {
      show((e.code || "error") + ": " + e.message, true);
    }
    slowTick();
    tick();
  }

  function wireForms() {
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, $("login-token").value.trim());
      $("login-token").value = "";
      start();
    });
    $("forget-token").addEventListener("click", () => askToken(""));
    for (const button of document.querySelectorAll("[data-node]")) {
      const verb = button.dataset.node;
      button.addEventListener("click", () => confirmThen(
        verb[0].toUpperCase() + verb.slice(1) + " the node of " + state.selected + "?",
        () => act("POST", "/node/" + verb, undefined, verb + " requested")));
    }
    $("schedule-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const name = $("schedule-name").value.trim();
      const height = Number($("schedule-height").value.trim());
      const infoText = $("schedule-info").value.trim();
      if (!Number.isInteger(height) || height < 1) { show("height: a block number", true); return; }
      let info;
      if (infoText) {
        try { info = JSON.parse(infoText); } catch (e) { info = infoText; }
      }
      const head = headOf(state.status[state.selected]);
      const text = "Schedule upgrade " + name + " at height " + height + " (" +
        etaText(height, head) + ") on " + state.selected + "?";
      const body = { name, height };
      if (info !== undefined) body.info = info;
      confirmThen(text, () => act("POST", "/upgrades", body, "scheduled " + name + " at " + height));
    });
    $("backup-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const label = $("backup-label").value.trim();
      confirmThen("Create a full backup of " + state.selected + " now?",
        () => act("POST", "/backups", label ? { label } : {}, "backup started"));
    });
  }

  async function start() {
    state.token = takeToken();
    if (!state.token) { askToken(""); return; }
    try {
      const reply = await api("GET", "/daemons");
      state.daemons = reply.daemons;
    } catch (e) {
      if (e.status !== 401) $("connection").textContent = "console unreachable";
      return;
    }
    $("login").hidden = true;
    $("console").hidden = false;
    $("connection").textContent = "connected";
    if (!state.selected && state.daemons.length) select(state.daemons[0].id);
  }

  document.addEventListener("DOMContentLoaded", () => {
    wireForms();
    start();
    setInterval(tick, 1000);
    setInterval(slowTick, 3000);
    setInterval(renderPlans, 1000);
  });
})();
