"use strict";
// The on-call status page: polls the daemon's JSON API and redraws every service.
// Every string that comes from the API reaches the DOM as text (Node.append of a string,
// textContent), never as HTML: reasons and messages carry config names and error texts.
// With tokens configured the API answers 401 without a bearer token: the page then asks for a
// viewer token and keeps it in sessionStorage (gone when the tab closes).
(() => {
  const POLL_MS = 1500;
  const TOKEN_KEY = "cutover.viewer-token";
  const EVENTS_SHOWN = 30;
  const SVG = "http://www.w3.org/2000/svg";
  const COLORS = new Set(["blue", "green"]);
  const STATES = new Set([
    "running", "awaiting_approval", "paused", "rolling_back", "completed", "rolled_back", "failed",
    "refused",
  ]);
  const VERDICTS = new Set(["pass", "fail", "inconclusive", "error"]);
  const ENDING = new Set(["rolling_back", "rolled_back", "failed"]);
  const PAUSES = new Set(["paused", "alarm", "drift"]); // event kinds that say why it paused

  class AuthNeeded extends Error {
    constructor(refused) {
      super("token needed");
      this.refused = refused;
    }
  }

  // --- DOM helpers: strings become text nodes, class names only from our own vocabulary ----

  function el(tag, cls, ...children) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    for (const child of children) {
      if (child !== null && child !== undefined && child !== false) node.append(child);
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    return node;
  }

  const known = (set, value, fallback) => (set.has(value) ? value : fallback);
  const colorClass = (c) => `color-${known(COLORS, c, "unknown")}`;

  // --- formatting ----------------------------------------------------------------------------

  function num(v) {
    if (typeof v !== "number" || !Number.isFinite(v)) return "—";
    if (Math.abs(v) >= 1000) return String(Math.round(v));
    return String(Number(v.toPrecision(3)));
  }

  function secs(s) {
    if (typeof s !== "number" || !Number.isFinite(s)) return "—";
    if (s < 120) return `${Number(s.toFixed(1))} s`;
    const m = Math.floor(s / 60);
    return `${m} min ${Math.round(s - m * 60)} s`;
  }

  const pct = (v) => (typeof v === "number" ? `${num(v)} %` : "—");
  const clock = (at) => new Date(at * 1000).toLocaleTimeString([], { hour12: false });

  // --- the API ---------------------------------------------------------------------------------

  async function api(path) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    const resp = await fetch(path, { headers, cache: "no-store" });
    if (resp.status === 401) throw new AuthNeeded(Boolean(token));
    let body = null;
    try {
      body = await resp.json();
    } catch {
      body = null;
    }
    if (!resp.ok) {
      const err = body && body.error;
      throw new Error(err ? `${resp.status} ${err.code}: ${err.message}` : `HTTP ${resp.status}`);
    }
    return body;
  }

  // --- drawing ---------------------------------------------------------------------------------

  function banner(c) {
    if (c.state === "rolled_back") {
      return el("div", "banner bad", el("strong", null, "Rolled back"), ": ",
        c.reason || "no reason recorded");
    }
    if (c.state === "failed") {
      return el("div", "banner bad", el("strong", null, "Rollback NOT verified (failed)"), ": ",
        c.reason || "no reason recorded",
        el("div", "hint", "The daemon keeps retrying each unverified router; see the runbook."));
    }
    if (c.state === "rolling_back") {
      return el("div", "banner warn", el("strong", null, "Rolling back"), ": ", c.reason || "");
    }
    if (c.state === "awaiting_approval") {
      return el("div", "banner wait", el("strong", null, "Waiting for approval"), ": ",
        el("code", null, `cutover promote ${c.service}`));
    }
    if (c.state === "paused") {
      const why = [...(c.events || [])].reverse().find((e) => PAUSES.has(e.kind));
      return el("div", "banner wait", el("strong", null, "Paused"), ": ",
        why ? why.message : "", " — ", el("code", null, `cutover resume ${c.service}`));
    }
    return null;
  }

  // the state store cannot take this cutover's latest transition (PRODUCT.md, Store faults are
  // visible): shown next to any other banner, as it changes what the daemon can do
  function storeBanner(c) {
    if (!c.store_error) {
      return null;
    }
    return el("div", "banner warn store-error", el("strong", null, "State store cannot write"),
      ": ", c.store_error,
      el("div", "hint",
        "Nothing moves toward the new color until this is written; a rollback still acts."));
  }

  function stageProgress(c) {
    const n = c.stages.length;
    const done = c.state === "completed";
    // every stage is done once the bake runs after the last one
    const staged = done || c.phase === "baking";
    const bar = el("div", "stages");
    c.stages.forEach((s, i) => {
      let fill = 0;
      let kind = "pending";
      if (staged || i < c.stage) {
        fill = 1;
        kind = "done";
      } else if (i === c.stage) {
        kind = "current";
        if (c.state === "awaiting_approval") fill = 1;
        else if (c.phase === "holding" && s.hold > 0) fill = Math.min(1, c.hold_elapsed / s.hold);
      }
      const inner = el("div", "fill");
      inner.style.width = `${(fill * 100).toFixed(1)}%`;
      const seg = el("div", `stage ${kind}`, inner,
        el("span", "stage-label", `${s.weight} %`, s.approval ? " ✋" : ""));
      seg.title = `stage ${i + 1}: ${s.weight} % ${c.to}, hold ${secs(s.hold)}` +
        (s.approval ? ", then waits for promote" : "");
      if (kind === "current") {
        seg.setAttribute("role", "progressbar");
        seg.setAttribute("aria-valuenow", String(Math.round(fill * 100)));
      }
      bar.append(seg);
    });
    const cur = c.stages[c.stage];
    const where = `stage ${c.stage + 1} of ${n}: ${cur.weight} % ${c.to}`;
    let text = `${where}, ${c.phase}`;
    if (done) text = `all ${n} stages done`;
    else if (ENDING.has(c.state)) text = `${c.state.replace("_", " ")} from ${where}`;
    else if (c.phase === "holding") {
      text = `${where}, hold ${secs(c.hold_elapsed)} of ${secs(cur.hold)}`;
    } else if (c.phase === "baking") {
      text = `all ${n} stages done; baking at 100 % ${c.to}: ${secs(c.bake_left)} of ` +
        `${secs(c.bake)} left, every check running (a breach rolls back)`;
    }
    const parts = [bar, el("p", "stage-text", text)];
    if (c.ttl_wait_left > 0) {
      parts.push(el("p", "muted",
        `waiting out the old DNS TTL before stage 1: ${secs(c.ttl_wait_left)} of ` +
        `${secs(c.ttl_wait)} left`));
    }
    return parts;
  }

  function table(cls, heads, rows) {
    return el("table", cls,
      el("thead", null, el("tr", null, ...heads.map((h) => el("th", null, h)))),
      el("tbody", null, ...rows));
  }

  function routerRows(c) {
    return c.routers.map((r) => {
      const notes = [];
      if (r.detail) notes.push(r.detail);
      if (r.clients_from) {
        notes.push(`DNS clients move from ${clock(r.clients_from)} at the earliest ` +
          `(TTL ${secs(r.ttl)})`);
      }
      const row = el("tr", null,
        el("td", "router-name", r.name),
        el("td", "muted", r.type),
        el("td", "desired", pct(r.desired)),
        el("td", "observed", r.observed === null ? "cannot verify" : pct(r.observed)),
        el("td", "detail", notes.join(" · "),
          r.drift ? el("span", "tag bad", "drift") : null,
          r.error ? el("span", "tag bad", r.error) : null));
      row.dataset.router = r.name;
      return row;
    });
  }

  function sparkline(history) {
    const w = 140;
    const h = 30;
    const pad = 3;
    const line = h - 8;
    const box = svg("svg", { width: w, height: h, viewBox: `0 0 ${w} ${h}`, class: "spark" });
    const title = svg("title", {});
    title.textContent = `last ${history.length} measurements`;
    box.append(title);
    const n = history.length;
    const x = (i) => pad + (n > 1 ? (i * (w - 2 * pad)) / (n - 1) : (w - 2 * pad) / 2);
    const valued = history
      .map((m, i) => ({ i, v: m.value }))
      .filter((p) => typeof p.v === "number" && Number.isFinite(p.v));
    if (valued.length) {
      const lo = Math.min(...valued.map((p) => p.v));
      const hi = Math.max(...valued.map((p) => p.v));
      const y = (v) => line - (hi > lo ? ((v - lo) / (hi - lo)) * (line - pad) : (line - pad) / 2);
      const points = valued.map((p) => `${x(p.i).toFixed(1)},${y(p.v).toFixed(1)}`).join(" ");
      box.append(svg("polyline", { points, class: "spark-line", fill: "none" }));
      const last = valued[valued.length - 1];
      box.append(svg("circle", { cx: x(last.i), cy: y(last.v), r: 2, class: "spark-last" }));
    }
    // one tick per measurement under the line, colored by its verdict
    history.forEach((m, i) => {
      box.append(svg("rect", {
        x: x(i) - 1.5, y: h - 5, width: 3, height: 4,
        class: `tick v-${known(VERDICTS, m.verdict, "none")}`,
      }));
    });
    return box;
  }

  function checkRows(c) {
    return c.checks.map((ch) => {
      const verdict = ch.status || "not measured";
      const row = el("tr", null,
        el("td", "check-name", ch.name, ch.dry_run ? el("span", "tag", "dry run") : null),
        el("td", null, el("span", `pill v-${known(VERDICTS, ch.status, "none")}`, verdict)),
        el("td", "value", num(ch.value)),
        el("td", "detail", ch.detail || ""),
        el("td", "failures", `${ch.failures_in_window} / ${ch.failure_limit ?? "—"}`),
        el("td", null, sparkline(ch.history || [])));
      row.dataset.check = ch.name;
      return row;
    });
  }

  function timeline(events) {
    const shown = events.slice(-EVENTS_SHOWN);
    const list = el("ol", "timeline", ...shown.map((e) => el("li", null,
      el("time", "muted", clock(e.at)), el("span", "ev-kind", e.kind),
      el("span", "ev-message", e.message))));
    const hidden = events.length - shown.length;
    return [el("h3", null, "Timeline"),
      hidden > 0 ? el("p", "muted", `${hidden} earlier events not shown`) : null, list];
  }

  function cutoverBlock(c) {
    const state = known(STATES, c.state, "unknown");
    const block = el("div", `cutover state-${state}`,
      banner(c),
      storeBanner(c),
      el("p", "summary",
        el("span", "muted", `${c.kind} ${c.id}: `),
        el("span", `chip ${colorClass(c.from)}`, c.from), " → ",
        el("span", `chip ${colorClass(c.to)}`, c.to), " ",
        el("span", "state", c.state), " ",
        c.state === "running" ? el("span", "muted phase", c.phase) : null),
      ...stageProgress(c),
      el("h3", null, "Routers"),
      table("routers", ["router", "type", `desired (${c.to})`, "observed", "detail"],
        routerRows(c)),
      el("h3", null, "Checks"),
      c.checks.length
        ? table("checks", ["check", "verdict", "last value", "against threshold",
          "failures / limit", "recent"], checkRows(c))
        : el("p", "muted", "no checks configured"),
      ...timeline(c.events || []));
    return block;
  }

  function serviceSection(s, c) {
    const section = el("section", "service",
      el("div", "service-head",
        el("h2", "name", s.name),
        el("span", `chip ${colorClass(s.live)}`, "live ", s.live)),
      c ? cutoverBlock(c) : el("p", "muted", "no cutover yet"));
    section.dataset.service = s.name;
    return section;
  }

  // --- the loop --------------------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);
  let timer = null;
  let busy = false;

  function problem(text) {
    $("problem").hidden = !text;
    $("problem").textContent = text || "";
    $("services").classList.toggle("stale", Boolean(text));
  }

  function askToken(refused) {
    sessionStorage.removeItem(TOKEN_KEY);
    $("services").replaceChildren();
    $("login-why").textContent = refused
      ? "The token was refused (401). Enter a viewer token."
      : "This daemon needs a viewer token.";
    $("login").hidden = false;
    $("updated").textContent = "";
    $("token").focus();
  }

  async function poll() {
    clearTimeout(timer);
    if (busy) return;
    busy = true;
    try {
      const list = await api("/v1/services");
      const details = await Promise.all(list.services.map((s) =>
        s.cutover ? api(`/v1/cutovers/${encodeURIComponent(s.cutover.id)}`) : null));
      $("services").replaceChildren(
        ...list.services.map((s, i) => serviceSection(s, details[i])));
      problem("");
      $("updated").textContent = `updated ${clock(Date.now() / 1000)}`;
      timer = setTimeout(poll, POLL_MS);
    } catch (err) {
      if (err instanceof AuthNeeded) {
        askToken(err.refused);
      } else {
        problem(`Cannot read the daemon's status (${err.message}); retrying.`);
        timer = setTimeout(poll, POLL_MS);
      }
    } finally {
      busy = false;
    }
  }

  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const token = $("token").value.trim();
    // a header value must be visible ASCII; anything else cannot be a token we issued
    if (!/^[\x21-\x7e]+$/.test(token)) {
      $("login-why").textContent = "A token is printable ASCII without spaces.";
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token").value = "";
    $("login").hidden = true;
    poll();
  });

  poll();
})();
