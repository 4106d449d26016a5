// The dashboard: a small single-page app over dirigent's JSON API and its event stream
// (docs/api.md). Pages are hash routes (#/tasks, #/task/ID, #/workflows, #/agents,
// #/scorecards, #/submit). Everything is built with DOM calls, never from HTML strings, so
// nothing a task or an agent wrote can become markup. Every request carries the session's CSRF
// value, kept in this origin's storage by the login page (the cookie alone is not enough).
// Live: one event stream on /events; any ledger record re-reads the page on view (at most ~3
// times a second), and a task's running attempt streams its output from /tasks/{id}/log.
"use strict";

const CSRF = localStorage.getItem("dirigent-csrf");
const PAGE_SIZE = 100;

// ---- small helpers -------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children.flat()) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

function toast(text, isError) {
  const box = document.getElementById("toast");
  const item = h("div", { class: isError ? "error" : "" }, text);
  box.append(item);
  setTimeout(() => item.remove(), isError ? 8000 : 3000);
}

/// The page for a browser without a session (never logged in, logged out, or the token was
/// replaced).
function loggedOut() {
  localStorage.removeItem("dirigent-csrf");
  document.getElementById("live").textContent = "";
  document.getElementById("logout").hidden = true;
  main.replaceChildren(h("h1", {}, "Not logged in"),
    h("p", {}, "Run ", h("code", {}, "dirigent open"), " in the workspace for a login link (it works once, within 5 minutes)."));
  current = null;
}

async function api(path, options) {
  const opts = Object.assign({ credentials: "same-origin", headers: {} }, options || {});
  opts.headers["X-Dirigent-CSRF"] = CSRF;
  const r = await fetch(path, opts);
  if (r.status === 401 || r.status === 403) {
    loggedOut();
    throw new Error("the session has ended; run `dirigent open` again");
  }
  const type = r.headers.get("content-type") || "";
  const body = type.includes("json") ? await r.json() : await r.text();
  if (!r.ok) throw new Error(body && body.error ? body.error.message : "HTTP " + r.status);
  return body;
}

async function act(path, body) {
  try {
    const answer = await api(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: body === undefined ? "" : JSON.stringify(body),
    });
    toast(answer.message || (answer.id ? `submitted ${answer.id}` : "done"));
    refreshSoon();
    return answer;
  } catch (e) {
    toast("error: " + e.message, true);
    return null;
  }
}

// Escape sequences and control characters an agent printed: removed, never shown as junk.
const ESCAPES = /\x1b(?:\[[0-?]*[ -\/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[PX^_][^\x1b]*\x1b\\|.)|[\x00-\x08\x0b-\x1f\x7f\x9b]/g;
function plain(text) {
  return String(text).replace(ESCAPES, "");
}

/// A Server-Sent Events stream read with fetch (so it carries the CSRF header, which
/// EventSource cannot), reconnecting with Last-Event-ID after a break unless `once`.
function openStream(url, onEvent, opts) {
  opts = opts || {};
  let lastId = null, stopped = false, abort = null;
  (async () => {
    while (!stopped) {
      abort = new AbortController();
      try {
        const headers = { "X-Dirigent-CSRF": CSRF };
        if (lastId !== null) headers["Last-Event-ID"] = lastId;
        const r = await fetch(url, { headers, credentials: "same-origin", signal: abort.signal });
        if (r.status === 401 || r.status === 403) { loggedOut(); return; }
        if (!r.ok) throw new Error("HTTP " + r.status);
        if (opts.onOpen) opts.onOpen();
        const reader = r.body.getReader();
        const decoder = new TextDecoder();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += decoder.decode(value, { stream: true });
          let i;
          while ((i = buf.indexOf("\n\n")) >= 0) {
            const block = buf.slice(0, i);
            buf = buf.slice(i + 2);
            let type = "message", id = null;
            const data = [];
            for (const line of block.split("\n")) {
              if (!line || line.startsWith(":")) continue;
              const c = line.indexOf(":");
              const field = c < 0 ? line : line.slice(0, c);
              let v = c < 0 ? "" : line.slice(c + 1);
              if (v.startsWith(" ")) v = v.slice(1);
              if (field === "event") type = v;
              else if (field === "data") data.push(v);
              else if (field === "id") id = v;
            }
            if (id !== null) lastId = id;
            if (data.length) onEvent(type, data.join("\n"));
          }
        }
        if (opts.once) return;
      } catch (e) {
        if (stopped) return;
      }
      if (stopped) return;
      if (opts.onError) opts.onError();
      await new Promise((r) => setTimeout(r, 1000));
    }
  })();
  return { close() { stopped = true; if (abort) abort.abort(); } };
}

function stateBadge(state) {
  return h("span", { class: "state " + state }, state.replace("_", " "));
}

function duration(ms) {
  if (ms === null || ms === undefined || ms < 0) return "-";
  const sec = Math.floor(ms / 1000);
  if (sec < 60) return (ms / 1000).toFixed(sec < 10 ? 1 : 0) + "s";
  const m = Math.floor(sec / 60);
  if (m < 60) return m + "m" + String(sec % 60).padStart(2, "0") + "s";
  const hr = Math.floor(m / 60);
  return hr + "h" + String(m % 60).padStart(2, "0") + "m";
}

function money(usd) {
  return usd ? "$" + Number(usd).toFixed(usd < 1 ? 4 : 2) : "-";
}

function when(ms) {
  return ms ? new Date(ms).toLocaleString() : "-";
}

// ---- Markdown, rendered to DOM nodes (never to an HTML string) ------------------------------

function inline(text) {
  const out = [];
  const re = /(`[^`]+`)|(\*\*[^*]+\*\*)|(\*[^*]+\*)|(\[[^\]]+\]\((https?:\/\/[^)\s]+)\))/g;
  let last = 0, m;
  while ((m = re.exec(text))) {
    if (m.index > last) out.push(text.slice(last, m.index));
    if (m[1]) out.push(h("code", {}, m[1].slice(1, -1)));
    else if (m[2]) out.push(h("strong", {}, m[2].slice(2, -2)));
    else if (m[3]) out.push(h("em", {}, m[3].slice(1, -1)));
    else if (m[4]) out.push(h("a", { href: m[5], rel: "noreferrer noopener", target: "_blank" }, m[4].slice(1, m[4].indexOf("]"))));
    last = re.lastIndex;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}

function markdown(text) {
  const root = h("div", { class: "markdown" });
  const lines = plain(text).split("\n");
  let i = 0, para = [], list = null;
  const flush = () => {
    // A line break in the text stays one (agents write plain text more often than Markdown).
    if (para.length) root.append(h("p", {}, para.flatMap((l, i) => (i ? [h("br", {}), ...inline(l)] : inline(l)))));
    para = [];
    list = null;
  };
  while (i < lines.length) {
    const line = lines[i];
    if (/^```/.test(line)) {
      flush();
      const code = [];
      i++;
      while (i < lines.length && !/^```/.test(lines[i])) code.push(lines[i++]);
      root.append(h("pre", {}, h("code", {}, code.join("\n"))));
      i++;
      continue;
    }
    const head = /^(#{1,4})\s+(.*)$/.exec(line);
    const item = /^\s*(?:[-*]|\d+\.)\s+(.*)$/.exec(line);
    if (head) {
      flush();
      root.append(h("h" + Math.min(6, head[1].length + 1), {}, inline(head[2])));
    } else if (item) {
      if (para.length) flush();
      if (!list) { list = h("ul", {}); root.append(list); }
      list.append(h("li", {}, inline(item[1])));
    } else if (!line.trim()) {
      flush();
    } else {
      list = null;
      para.push(line);
    }
    i++;
  }
  flush();
  return root;
}

// ---- routing and live updates ----------------------------------------------------------------

const main = document.getElementById("main");
let current = null; // { render: async () => void, cleanup: () => void }
let refreshTimer = null;
let lastRefresh = 0;

function refreshSoon() {
  // At most one re-read every 300 ms, and never more than a second after the event.
  if (refreshTimer) return;
  const wait = Math.max(0, 300 - (Date.now() - lastRefresh));
  refreshTimer = setTimeout(async () => {
    refreshTimer = null;
    lastRefresh = Date.now();
    if (current && current.render) {
      try { await current.render(); } catch (e) { showError(e); }
    }
  }, wait);
}

function showError(e) {
  main.replaceChildren(h("h1", {}, "Something went wrong"), h("p", {}, "error: " + e.message));
}

function route() {
  if (current && current.cleanup) current.cleanup();
  current = null;
  const hash = location.hash || "#/tasks";
  const parts = hash.replace(/^#\//, "").split("/");
  const page = parts[0] || "tasks";
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.page === page || (page === "task" && a.dataset.page === "tasks")) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const pages = { tasks: tasksPage, task: taskPage, workflows: workflowsPage, agents: agentsPage, fleet: fleetPage, scorecards: scorecardsPage, submit: submitPage };
  const make = pages[page] || tasksPage;
  main.replaceChildren();
  current = make(parts.slice(1).map(decodeURIComponent));
  Promise.resolve(current.render()).catch(showError);
}

function connectEvents() {
  const live = document.getElementById("live");
  // Only when to look again: one small event per batch of records, not the records.
  openStream("/events?brief=true", () => refreshSoon(), {
    onOpen: () => { live.textContent = "live"; },
    onError: () => { live.textContent = "reconnecting…"; },
  });
}

// ---- Tasks ---------------------------------------------------------------------------------

const taskFilters = { state: "", agent: "", role: "", q: "", offset: 0 };

function tasksPage() {
  const table = h("tbody", {});
  const pager = h("div", { class: "pager" });
  const total = h("span", {});
  let timer = null;
  const field = (name, label, control) => {
    control.value = taskFilters[name];
    const changed = () => {
      if (taskFilters[name] === control.value) return;
      taskFilters[name] = control.value;
      taskFilters.offset = 0;
      clearTimeout(timer);
      timer = setTimeout(render, 200);
    };
    control.addEventListener("input", changed);
    control.addEventListener("change", changed);
    return h("label", {}, label, control);
  };
  const stateSelect = h("select", { name: "state" },
    ["", "pending", "running", "merging", "merge_waiting", "done", "failed", "requeued"].map((v) => h("option", { value: v }, v || "any")));
  const form = h("form", { class: "filters", role: "search", onsubmit: (e) => e.preventDefault() },
    field("state", "State", stateSelect),
    field("agent", "Agent", h("input", { name: "agent", size: 12 })),
    field("role", "Role", h("input", { name: "role", size: 12 })),
    field("q", "Text (id or title)", h("input", { name: "q", type: "search", size: 24 })),
    total);
  main.append(h("h1", {}, "Tasks"), form,
    h("div", { class: "wide" }, h("table", { id: "tasks" },
      h("thead", {}, h("tr", {}, ["Task", "State", "Agent", "Attempt", "Elapsed", "Cost", "Branch"].map((c) => h("th", { scope: "col", class: ["Attempt", "Elapsed", "Cost"].includes(c) ? "num" : "" }, c)))),
      table)),
    pager);

  async function render() {
    const q = new URLSearchParams({ order: "newest", offset: taskFilters.offset, limit: PAGE_SIZE });
    for (const k of ["state", "agent", "role", "q"]) if (taskFilters[k]) q.set(k, taskFilters[k]);
    const answer = await api("/tasks?" + q);
    const now = Date.now();
    table.replaceChildren(...answer.tasks.map((t) => {
      const start = t.started_ms || t.received_ms;
      const end = t.finished_ms || now;
      return h("tr", { "data-id": t.id },
        h("td", {}, h("a", { href: "#/task/" + encodeURIComponent(t.id) }, t.id), h("div", { class: "muted" }, t.title)),
        h("td", {}, stateBadge(t.state)),
        h("td", {}, t.agent || "-"),
        h("td", { class: "num" }, t.attempts),
        h("td", { class: "num" + (t.finished_ms ? "" : " ticking"), "data-since": start }, duration(end - start)),
        h("td", { class: "num" }, money(t.cost_usd)),
        h("td", {}, t.branch ? t.branch + (t.diff ? ` ${t.diff.files}f +${t.diff.insertions} -${t.diff.deletions}` : "") : ""));
    }));
    if (!answer.tasks.length) table.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "no tasks match")));
    const from = answer.total ? taskFilters.offset + 1 : 0;
    const to = taskFilters.offset + answer.tasks.length;
    total.textContent = `${answer.total} task${answer.total === 1 ? "" : "s"}`;
    const old = answer.archived || { done: 0, failed: 0 };
    if (old.done + old.failed > 0 && to >= answer.total) {
      table.append(h("tr", {}, h("td", { colspan: 7, class: "muted" },
        `and ${old.done + old.failed} older finished tasks (${old.done} done, ${old.failed} failed): only their outcome is kept here; \`dirigent status ID\` and the ledger have the rest`)));
    }
    pager.replaceChildren(
      h("button", { class: "secondary", disabled: taskFilters.offset === 0, onclick: () => { taskFilters.offset = Math.max(0, taskFilters.offset - PAGE_SIZE); render(); } }, "← Newer"),
      h("span", {}, `${from}–${to} of ${answer.total}`),
      h("button", { class: "secondary", disabled: to >= answer.total, onclick: () => { taskFilters.offset += PAGE_SIZE; render(); } }, "Older →"));
  }
  return { render };
}

// ---- Task ----------------------------------------------------------------------------------

function taskPage([id]) {
  let log = null; // the open output stream
  let logAttempt = null;
  let pinned = false; // the user chose which attempt's output to show
  const logBox = h("pre", { class: "log", id: "log", "aria-live": "off", tabindex: 0 });
  const body = h("div", {});
  const resultBox = h("div", {});
  let resultFor = null;
  main.append(h("h1", {}, "Task ", h("code", {}, id)), body);

  function follow(attempt) {
    if (logAttempt === attempt) return;
    if (log) log.close();
    logAttempt = attempt;
    logBox.replaceChildren();
    let ended = false;
    log = openStream(`/tasks/${encodeURIComponent(id)}/log?attempt=${attempt}`, (type, data) => {
      if (type === "end") { ended = true; log.close(); return; }
      if (type !== "output") return;
      const chunk = JSON.parse(data);
      logBox.append(h("span", { class: chunk.stream === "stderr" ? "err" : "" }, plain(chunk.text).replace(/\r/g, "")));
      // Keep the page light on long outputs: the last ~2,000 chunks.
      while (logBox.childNodes.length > 2000) logBox.firstChild.remove();
      logBox.scrollTop = logBox.scrollHeight;
    }, { onError: () => { if (ended) log.close(); } });
  }

  let drawn = "";
  async function render() {
    const t = await api("/tasks/" + encodeURIComponent(id));
    // Redrawn only when the record changed: a button is not replaced under the pointer, and a
    // running attempt's duration still ticks through the live output.
    const now = JSON.stringify(t);
    if (now === drawn) return;
    drawn = now;
    const actions = h("div", { class: "filters" });
    if (!["done", "failed"].includes(t.state)) actions.append(h("button", { id: "cancel", onclick: () => act(`/tasks/${encodeURIComponent(id)}/cancel`) }, "Cancel"));
    if (t.state === "failed") actions.append(h("button", { id: "retry", onclick: () => act(`/tasks/${encodeURIComponent(id)}/retry`) }, "Retry"));
    if (t.state === "merge_waiting") actions.append(h("button", { id: "merge", onclick: () => act(`/tasks/${encodeURIComponent(id)}/merge`) }, "Merge"));
    const facts = h("dl", {},
      h("dt", {}, "State"), h("dd", {}, stateBadge(t.state), t.reason ? " " + t.reason : ""),
      h("dt", {}, "Title"), h("dd", {}, t.title || "-"),
      h("dt", {}, "Chain"), h("dd", {}, (t.chain || []).join(" → ") || "-"),
      h("dt", {}, "Received"), h("dd", {}, when(t.received_ms)),
      h("dt", {}, "Cost"), h("dd", {}, money(t.cost_usd)));
    if (t.worktree) facts.append(h("dt", {}, "Branch"), h("dd", {}, t.worktree.branch, t.worktree.diff ? ` — ${t.worktree.diff.files} file(s) +${t.worktree.diff.insertions} -${t.worktree.diff.deletions}` : ""));
    const attempts = h("div", { class: "wide" }, h("table", { id: "attempts" },
      h("thead", {}, h("tr", {}, ["#", "Agent", "Class", "Reason", "Exit", "Duration", "Cost"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, (t.attempts || []).map((a) => h("tr", {},
        h("td", {}, h("button", { class: "secondary", title: "show this attempt's output", onclick: () => { pinned = true; drawn = ""; follow(a.n); render(); } }, a.n)),
        h("td", {}, a.agent),
        h("td", {}, a.class ? stateBadge(a.class) : stateBadge("running")),
        h("td", {}, a.reason || ""),
        h("td", {}, a.signal ? "signal " + a.signal : a.exit_code ?? "-"),
        a.class ? h("td", {}, duration(a.duration_ms)) : h("td", { class: "ticking", "data-since": a.started_ms }, duration(Date.now() - a.started_ms)),
        h("td", {}, money(a.usage && a.usage.cost_usd)))))));
    const parts = [actions, facts];
    if (t.prompt) parts.push(h("h2", {}, "Prompt"), h("pre", { id: "prompt" }, t.prompt));
    // A workflow run: its phases, as on the Workflows page.
    const runBox = h("div", {});
    if ((t.phases && t.phases.length) || !(t.chain || []).length) {
      parts.push(runBox);
      api(`/runs?id=${encodeURIComponent(id)}`).then((r) => {
        if (r.runs.length) runBox.replaceChildren(h("h2", {}, "Workflow run"), runCard(r.runs[0]));
      }).catch(() => {});
    }
    if ((t.attempts || []).length) parts.push(h("h2", {}, "Attempts"), attempts);
    else if (["pending", "requeued"].includes(t.state)) {
      parts.push(h("p", { class: "muted" }, (t.after || []).length
        ? `Waiting to start: after ${t.after.join(", ")}, and for a free slot.`
        : "Waiting to start: for a free slot (the daemon's `concurrency`, the agent's limits)."));
    }
    // The latest attempt, unless the user picked one.
    const shown = pinned ? logAttempt : ((t.attempts || []).at(-1) || {}).n;
    const chosen = (t.attempts || []).find((a) => a.n === shown);
    if (chosen) {
      parts.push(h("h2", {}, `Output of attempt ${chosen.n} (${chosen.agent})`), logBox);
      follow(chosen.n);
    }
    if (t.state === "done") {
      parts.push(h("h2", {}, "Result"), resultBox);
      if (resultFor !== id) {
        resultFor = id;
        api(`/tasks/${encodeURIComponent(id)}/result`).then((text) => resultBox.replaceChildren(markdown(String(text)))).catch((e) => resultBox.replaceChildren("error: " + e.message));
      }
    }
    if (t.state === "failed") {
      const report = h("div", { id: "report" });
      parts.push(h("h2", {}, "Escalation report"), report);
      api(`/tasks/${encodeURIComponent(id)}/report`).then((text) => report.replaceChildren(markdown(String(text)))).catch((e) => report.replaceChildren(h("p", { class: "muted" }, e.message)));
    }
    body.replaceChildren(...parts);
  }
  return { render, cleanup: () => { if (log) log.close(); } };
}

// ---- Workflows -----------------------------------------------------------------------------

function workflowsPage() {
  const runsBox = h("div", { id: "runs" });
  const defsBox = h("div", {});
  main.append(h("h1", {}, "Workflows"), h("h2", {}, "Runs"), runsBox, h("h2", {}, "Definitions"), defsBox);
  async function render() {
    const [runs, defs] = await Promise.all([api("/runs"), api("/workflows")]);
    runsBox.replaceChildren(...(runs.runs.length ? runs.runs.map(runCard) : [h("p", { class: "muted" }, "no workflow runs yet")]));
    defsBox.replaceChildren(h("table", {},
      h("thead", {}, h("tr", {}, ["Name", "Phases", "Variables", "Run"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, defs.workflows.map((w) => h("tr", {},
        h("td", {}, w.name, w.valid ? "" : h("span", { class: "state failed" }, " invalid")),
        h("td", {}, (w.phases || []).join(" → ")),
        h("td", {}, Object.keys(w.vars || {}).join(", ")),
        h("td", {}, h("a", { href: "#/submit/" + encodeURIComponent(w.name) }, "Run…")))))));
  }
  return { render };
}

function runCard(run) {
  const graph = h("div", { class: "graph", role: "list", "aria-label": "phases of " + run.id });
  run.phases.forEach((p, i) => {
    if (i) graph.append(h("span", { class: "arrow", "aria-hidden": "true" }, "→"));
    graph.append(h("div", { class: "node " + p.state, role: "listitem", "data-phase": p.name },
      h("strong", {}, p.name), " ", stateBadge(p.state),
      p.tasks.length ? h("ul", {}, p.tasks.map((c) => h("li", {}, h("a", { href: "#/task/" + encodeURIComponent(c.id) }, c.id), " ", stateBadge(c.state)))) : null,
      p.rounds.length ? h("ul", {}, p.rounds.map((r) => h("li", {}, `round ${r.round}: `, stateBadge(r.passed ? "pass" : "fail"), r.feedback ? " " + r.feedback : ""))) : null));
  });
  return h("div", { class: "card run", "data-run": run.id },
    h("h3", {}, h("a", { href: "#/task/" + encodeURIComponent(run.id) }, run.id), " ", run.workflow ? `(${run.workflow}) ` : "", stateBadge(run.state)),
    graph);
}

// ---- Agents --------------------------------------------------------------------------------

function agentsPage() {
  const grid = h("div", { class: "grid", id: "agents" });
  let ticker = null;
  main.append(h("h1", {}, "Agents"), grid);
  async function render() {
    const data = await api("/agents");
    grid.replaceChildren(...data.agents.map((a) => {
      const av = a.availability || { state: "ready" };
      const facts = h("dl", {},
        h("dt", {}, "Provider"), h("dd", {}, a.provider),
        h("dt", {}, "Installed"), h("dd", {}, a.installed ? (a.path || "yes") : "no" + (a.install_hint ? " — " + a.install_hint : "")),
        h("dt", {}, "Limits"), h("dd", {}, [
          a.max_parallel ? `${a.max_parallel} at once` : "no limit of its own at once",
          a.stagger_ms ? `starts ${duration(a.stagger_ms)} apart` : null,
          `timeout ${duration(a.timeout_ms)}`,
        ].filter(Boolean).join(", ")),
        h("dt", {}, "Record"), h("dd", {}, `${a.ok}/${a.attempts} ok`),
        h("dt", {}, "Last failure"), h("dd", {}, a.last_failure ? `${a.last_failure.class}: ${a.last_failure.reason}` : "-"));
      const card = h("div", { class: "card agent", "data-agent": a.name },
        h("h3", {}, a.name, " ", stateBadge(av.state)));
      if (av.state === "cooling_down") {
        card.append(h("p", {}, "rests until ", h("span", { class: "countdown", "data-until": av.until_ms }, ""), " — ", av.reason || ""));
      }
      if (av.state === "disabled") card.append(h("p", {}, av.reason || ""));
      if (av.state !== "ready") {
        card.append(h("button", { class: "enable", onclick: () => act(`/agents/${encodeURIComponent(a.name)}/enable`) }, "Enable"));
      }
      card.append(facts);
      return card;
    }));
    tick();
  }
  function tick() {
    for (const el of grid.querySelectorAll(".countdown")) {
      const left = Number(el.dataset.until) - Date.now();
      el.textContent = left > 0 ? duration(left) + " from now" : "now";
    }
  }
  ticker = setInterval(tick, 1000);
  return { render, cleanup: () => clearInterval(ticker) };
}

// ---- Fleet ---------------------------------------------------------------------------------

function fleetPage() {
  const summary = h("p", {});
  const workers = h("tbody", {});
  const tasks = h("tbody", {});
  main.append(h("h1", {}, "Fleet"), summary,
    h("h2", {}, "Workers"),
    h("table", { id: "fleet-workers" }, h("thead", {}, h("tr", {}, ["Worker", "State", "Running", "Seen", "Agents", "Spent today"].map((c) => h("th", {}, c)))), workers),
    h("h2", {}, "Tasks on every node"),
    h("table", { id: "fleet-tasks" }, h("thead", {}, h("tr", {}, ["Node", "Task", "State", "Agent", "Where"].map((c) => h("th", {}, c)))), tasks));
  async function render() {
    const data = await api("/fleet");
    const f = data.fleet || {};
    const live = (f.workers || []).filter((w) => w.live && w.works).length;
    summary.replaceChildren(`node ${f.node} at ${f.url}: `,
      f.connected ? `connected, ${live} live worker(s) taking tasks` : `not connected: ${f.problem || "?"} (it keeps obeying the last state it saw)`);
    if (f.twin) summary.append(h("div", { class: "warn" }, "another node of the fleet also uses this node's name"));
    if (f.not_taken) summary.append(h("div", { class: "warn" }, `${f.not_taken.count} message(s) of the fleet not taken here, latest: ${f.not_taken.latest}`));
    if (f.refused) summary.append(h("div", { class: "warn" }, `the server refused this node ${f.refused.count} time(s), latest: ${f.refused.latest} (its permissions: docs/cluster.md)`));
    const waiting = Object.entries(f.unrunnable || {});
    for (const [agent, ids] of waiting) {
      summary.append(h("div", { class: "warn" }, `waiting: no live worker of the fleet runs ${agent} (${ids.length} task(s): ${ids.slice(0, 5).join(", ")})`));
    }
    workers.replaceChildren(...(f.workers || []).map((w) => h("tr", { "data-worker": w.name },
      h("td", {}, w.name),
      h("td", {}, stateBadge(w.live ? "live" : "gone")),
      h("td", {}, w.works ? `${w.running}/${w.slots}` : "-"),
      h("td", {}, duration(w.seen_ms_ago) + " ago"),
      h("td", {}, w.works ? (w.agents || []).join(", ") || "(none installed)" : "(submits only)"),
      h("td", {}, "$" + (w.spent_today_usd || 0).toFixed(2)))));
    const rows = [];
    for (const n of data.nodes || []) {
      for (const t of n.tasks || []) {
        const where = t.ran_on ? "ran on " + t.ran_on : t.on_fleet ? "on the fleet's queue" : t.fleet_key ? "for " + String(t.fleet_key).split(".")[0] : "here";
        rows.push(h("tr", { "data-node": n.node, "data-task": t.id },
          h("td", {}, n.node), h("td", {}, t.id), h("td", {}, stateBadge(t.state)), h("td", {}, t.agent || "-"), h("td", {}, where)));
      }
    }
    tasks.replaceChildren(...(rows.length ? rows : [h("tr", {}, h("td", { colspan: 5, class: "muted" }, "no task on any node yet (the events stream is read from its start when this page first asks)"))]));
  }
  // Heartbeats come from the fleet's server, not this node's records: looked at again every
  // 5 s (a worker beats every 5 s) besides each change here.
  const ticker = setInterval(() => refreshSoon(), 5000);
  return { render, cleanup: () => clearInterval(ticker) };
}

// ---- Scorecards ----------------------------------------------------------------------------

const PALETTE = ["#1e40af", "#b45309", "#14632f", "#9b1c1c", "#6d28d9", "#0e7490", "#4b5563", "#be185d"];

/// A legend entry: a square in the series' colour (set through the CSSOM, which the page's
/// Content-Security-Policy allows) and its name.
function swatch(name, i) {
  const square = h("span", { "aria-hidden": "true" }, "■ ");
  square.style.color = PALETTE[i % PALETTE.length];
  return h("span", { class: "swatch" }, square, name);
}

function barChart(title, rows, unit) {
  // rows: [{label, values: [{name, value}]}] drawn as grouped horizontal bars.
  const names = [...new Set(rows.flatMap((r) => r.values.map((v) => v.name)))];
  const max = Math.max(1e-9, ...rows.flatMap((r) => r.values.map((v) => v.value)));
  const bar = 14, gap = 8, left = 130, width = 420;
  const height = rows.length * (names.length * bar + gap) + 10;
  const w = left + width + 80, hh = Math.max(height, 30);
  const svg = s("svg", { viewBox: `0 0 ${w} ${hh}`, width: w, height: hh, role: "img", "aria-label": title });
  let y = 5;
  for (const r of rows) {
    svg.append(s("text", { x: 0, y: y + bar }, r.label));
    r.values.forEach((v) => {
      const i = names.indexOf(v.name);
      const w = Math.max(1, (v.value / max) * width);
      svg.append(s("rect", { x: left, y, width: w, height: bar - 2, fill: PALETTE[i % PALETTE.length] }, s("title", {}, `${r.label} ${v.name}: ${unit(v.value)}`)));
      svg.append(s("text", { x: left + w + 4, y: y + bar - 3 }, unit(v.value)));
      y += bar;
    });
    y += gap;
  }
  const legend = names.length > 1 ? h("div", { class: "legend" }, names.map((n, i) => swatch(n, i))) : null;
  return h("figure", { class: "chart" }, h("figcaption", {}, h("strong", {}, title)), svg, legend);
}

function stackedDays(title, days, key) {
  // One column per day, stacked by failure class.
  const classes = [...new Set(days.flatMap((d) => Object.keys(d[key] || {})))];
  if (!classes.length) return h("figure", { class: "chart" }, h("figcaption", {}, h("strong", {}, title)), h("p", { class: "muted" }, "no failures in this period"));
  const max = Math.max(1, ...days.map((d) => Object.values(d[key] || {}).reduce((a, b) => a + b, 0)));
  const col = 28, height = 160, left = 30;
  const w = left + days.length * col + 10;
  const svg = s("svg", { viewBox: `0 0 ${w} ${height + 40}`, width: w, height: height + 40, role: "img", "aria-label": title });
  days.forEach((d, i) => {
    let y = height;
    classes.forEach((c, j) => {
      const n = (d[key] || {})[c] || 0;
      if (!n) return;
      const hgt = (n / max) * height;
      y -= hgt;
      svg.append(s("rect", { x: left + i * col, y, width: col - 6, height: hgt, fill: PALETTE[j % PALETTE.length] }, s("title", {}, `${d.day} ${c}: ${n}`)));
    });
    svg.append(s("text", { x: left + i * col, y: height + 14 }, d.day.slice(5)));
  });
  svg.append(s("text", { x: 0, y: 10 }, String(max)));
  const legend = h("div", { class: "legend" }, classes.map((c, j) => swatch(c, j)));
  return h("figure", { class: "chart" }, h("figcaption", {}, h("strong", {}, title)), svg, legend);
}

function scorecardsPage() {
  const since = h("select", { name: "since" }, ["1d", "7d", "30d", "365d"].map((v) => h("option", { value: v, selected: v === "7d" }, v)));
  const by = h("select", { name: "by" }, ["agent", "role", "model"].map((v) => h("option", { value: v }, v)));
  const box = h("div", { class: "charts", id: "charts" });
  const table = h("div", {});
  since.addEventListener("change", () => render());
  by.addEventListener("change", () => render());
  main.append(h("h1", {}, "Scorecards"), h("div", { class: "filters" }, h("label", {}, "Period", since), h("label", {}, "Group by", by)), box, table);
  async function render() {
    const data = await api(`/stats?since=${since.value}&by=${by.value}`);
    const rows = data.rows;
    if (!rows.length) {
      box.replaceChildren(h("p", { class: "muted" }, "no attempts finished in this period"));
      table.replaceChildren();
      return;
    }
    const pct = (v) => Math.round(v * 100) + "%";
    box.replaceChildren(
      barChart("Success rate", rows.map((r) => ({ label: r.key, values: [{ name: "success", value: r.success_rate }] })), pct),
      barChart("Fallback rate", rows.map((r) => ({ label: r.key, values: [{ name: "fallback", value: r.fallback_rate }] })), pct),
      barChart("Duration p50 / p95", rows.map((r) => ({ label: r.key, values: [{ name: "p50", value: r.median_ms }, { name: "p95", value: r.p95_ms }] })), duration),
      barChart("Cost per day", data.days.map((d) => ({ label: d.day, values: [{ name: "cost", value: d.cost_usd }] })), money),
      stackedDays("Failure classes per day", data.days, "classes"));
    table.replaceChildren(h("table", { id: "scores" },
      h("thead", {}, h("tr", {}, [by.value, "Attempts", "OK", "Fallback", "p50", "p95", "Cost"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows.map((r) => h("tr", {}, h("td", {}, r.key), h("td", {}, r.attempts), h("td", {}, pct(r.success_rate)), h("td", {}, pct(r.fallback_rate)), h("td", {}, duration(r.median_ms)), h("td", {}, duration(r.p95_ms)), h("td", {}, money(r.cost_usd)))))));
  }
  return { render };
}

// ---- Submit --------------------------------------------------------------------------------

function submitPage([workflow]) {
  const box = h("div", {});
  main.append(h("h1", {}, "Submit"), box);
  let drawn = false;
  async function render() {
    if (drawn) return; // a form being filled in is never redrawn under the user
    drawn = true;
    const [agents, defs] = await Promise.all([api("/agents"), api("/workflows")]);
    const prompt = h("textarea", { name: "prompt", required: true, id: "prompt-input" });
    const agent = h("select", { name: "agent" }, h("option", { value: "" }, "(default chain)"), agents.agents.map((a) => h("option", { value: a.name }, a.name)));
    const role = h("select", { name: "role" }, h("option", { value: "" }, "(none)"), Object.keys(agents.roles).map((r) => h("option", { value: r }, r)));
    const chain = h("input", { name: "chain", placeholder: "agent1, agent2" });
    const files = h("input", { name: "files", placeholder: "src/a.rs, src/b.rs" });
    const output = h("input", { name: "output", placeholder: "notes/answer.md" });
    const list = (v) => v.split(/[\s,]+/).filter(Boolean);
    const taskForm = h("form", { class: "submit", id: "task-form", onsubmit: async (e) => {
      e.preventDefault();
      const task = { prompt: prompt.value };
      if (agent.value) task.agent = agent.value;
      if (role.value) task.role = role.value;
      if (chain.value.trim()) task.chain = list(chain.value);
      if (files.value.trim()) task.files = list(files.value);
      if (output.value.trim()) task.output = output.value.trim();
      const answer = await act("/tasks", task);
      if (answer && answer.id) location.hash = "#/task/" + encodeURIComponent(answer.id);
    } },
      h("label", {}, "Prompt", prompt),
      h("div", { class: "filters" }, h("label", {}, "Agent", agent), h("label", {}, "Role", role), h("label", {}, "Chain", chain)),
      h("label", {}, "Files (read by the agent)", files),
      h("label", {}, "Output file", output),
      h("div", {}, h("button", { type: "submit" }, "Submit task")));
    const wfSelect = h("select", { name: "workflow" }, defs.workflows.filter((w) => w.valid).map((w) => h("option", { value: w.name, selected: w.name === workflow }, w.name)));
    const varsBox = h("div", { class: "filters" });
    const drawVars = () => {
      const w = defs.workflows.find((x) => x.name === wfSelect.value);
      varsBox.replaceChildren(...Object.entries((w && w.vars) || {}).map(([k, v]) => h("label", {}, k + (v === null ? " (required)" : ""), h("input", { name: "var-" + k, "data-var": k, value: v || "", required: v === null }))));
    };
    wfSelect.addEventListener("change", drawVars);
    drawVars();
    const runForm = h("form", { class: "submit", id: "run-form", onsubmit: async (e) => {
      e.preventDefault();
      const vars = {};
      for (const input of varsBox.querySelectorAll("input")) vars[input.dataset.var] = input.value;
      const answer = await act(`/workflows/${encodeURIComponent(wfSelect.value)}/runs`, { vars });
      if (answer && answer.id) location.hash = "#/workflows";
    } },
      h("label", {}, "Workflow", wfSelect), varsBox, h("div", {}, h("button", { type: "submit" }, "Run workflow")));
    box.replaceChildren(h("h2", {}, "A task"), taskForm, h("h2", {}, "A workflow run"), runForm);
  }
  return { render };
}

// ---- start ---------------------------------------------------------------------------------

// Running durations tick between redraws.
setInterval(() => {
  for (const el of document.querySelectorAll(".ticking[data-since]")) el.textContent = duration(Date.now() - Number(el.dataset.since));
}, 1000);

document.getElementById("logout").addEventListener("click", async () => {
  try { await api("/logout", { method: "POST" }); } catch (_) { /* logged out either way */ }
  loggedOut();
});

if (!CSRF) {
  loggedOut();
} else {
  window.addEventListener("hashchange", () => { route(); main.focus(); });
  route();
  connectEvents();
  // The Fleet page is listed only for a daemon in a fleet.
  api("/fleet").then((d) => { document.getElementById("fleet-link").hidden = !d.fleet; }, () => {});
}
