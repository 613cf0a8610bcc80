// Supervisor dashboard: polls GET /api/admin/dashboard every refresh-s seconds (2 s) and
// redraws the four tables. Every value goes in with textContent, never as markup. A poll
// starts only after the previous one ended, and none runs while the tab is hidden.
"use strict";

(function () {
  const API = "/api/admin/dashboard";
  const LOGIN = "/?next=/supervisor";
  const meta = (name) => document.querySelector(`meta[name="${name}"]`).content;
  const REFRESH_MS = Math.max(1, Number(meta("refresh-s")) || 2) * 1000;
  const ACTIVITY = {
    idle: "Idle",
    in_call: "In call",
    dialing: "Dialing",
    wrap_up: "Wrap-up",
    offer: "Offer",
  };
  let timer = null;
  let busy = false;

  function duration(s) {
    if (s === null || s === undefined) return "–";
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const sec = String(s % 60).padStart(2, "0");
    return h ? `${h}:${String(m).padStart(2, "0")}:${sec}` : `${m}:${sec}`;
  }

  function percent(r) {
    return r === null || r === undefined ? "–" : `${(r * 100).toFixed(1)} %`;
  }

  function clock(isoText) {
    return isoText ? new Date(isoText).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "–";
  }

  function cell(tr, label, text, cls) {
    const td = document.createElement("td");
    td.setAttribute("data-label", label);
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function fill(id, rows, draw) {
    const body = document.querySelector(`#${id} tbody`);
    const fresh = document.createDocumentFragment();
    for (const row of rows) {
      const tr = document.createElement("tr");
      draw(tr, row);
      fresh.appendChild(tr);
    }
    body.replaceChildren(fresh);
    document.getElementById(id).hidden = rows.length === 0;
    document.querySelector(`.empty[data-for="${id}"]`).hidden = rows.length > 0;
  }

  function yesNo(v) {
    return v ? ["Yes", "yes"] : ["No", "no"];
  }

  function campaignRow(tr, c) {
    const a = c.abandon;
    tr.dataset.id = String(c.id);
    cell(tr, "Campaign", c.name);
    cell(tr, "State", c.state);
    cell(tr, "Mode", c.mode.replace("_", " "));
    cell(tr, "Queue", c.queue ? String(c.queue.waiting) : "–", "num");
    cell(tr, "Calls", String(c.calls), "num");
    cell(tr, "Answer rate today", `${percent(c.answer_rate_today)} (${c.live_answers_today}/${c.dials_today})`, "num");
    cell(tr, "Abandoned today", `${percent(a.rate_today)} (${a.abandoned_today}/${a.answered_today})`, "num");
    cell(tr, "Abandoned 30 d", `${percent(a.rate_30d)} (${a.abandoned_30d}/${a.answered_30d})`, "num");
    cell(tr, "Target", percent(a.target), "num");
    const [text, cls] = yesNo(a.within_target);
    cell(tr, "Within target", text, cls);
    cell(tr, "Callbacks next hour", String(c.callbacks_next_hour), "num");
  }

  function agentRow(tr, a) {
    tr.dataset.id = a.id;
    cell(tr, "Agent", a.name ? `${a.name} (${a.id})` : a.id);
    const cls = `status-${a.status.toLowerCase().replace(/ /g, "-")}`;
    cell(tr, "Status", a.status, cls).classList.add("agent-status");
    cell(tr, "Voice", a.ready_voice ? "Ready" : "Not ready");
    cell(tr, "Preview", a.ready_preview ? "Ready" : "Not ready");
    cell(tr, "Activity", ACTIVITY[a.activity] || a.activity);
    const since = a.activity !== "idle" ? a.activity_s : a.since_s;
    cell(tr, "Since", duration(since), "num");
  }

  function callRow(tr, c) {
    tr.dataset.id = c.attempt_id;
    cell(tr, "Campaign", c.campaign);
    cell(tr, "Agent", c.agent_id ? `${c.agent || ""} (${c.agent_id})`.trim() : "–");
    cell(tr, "Number", c.number, "num");
    cell(tr, "State", c.state);
    cell(tr, "Duration", duration(c.duration_s), "num");
    cell(tr, "Talk", duration(c.talk_s), "num");
  }

  function callbackRow(tr, cb) {
    tr.dataset.id = String(cb.id);
    cell(tr, "Due", cb.overdue ? `${clock(cb.due_at)} (overdue)` : clock(cb.due_at), "num");
    cell(tr, "Campaign", cb.campaign);
    cell(tr, "For", cb.personal ? `${cb.agent || ""} (${cb.agent_id || "?"})`.trim() : "Pool");
    cell(tr, "State", cb.state);
  }

  function draw(d) {
    fill("campaigns", d.campaigns, campaignRow);
    fill("agents", d.agents, agentRow);
    fill("calls", d.calls, callRow);
    fill("callbacks", d.callbacks.due, callbackRow);
    document.getElementById("calls-total").textContent = `(${d.calls_total})`;
    document.getElementById("callbacks-total").textContent = `(${d.callbacks.total})`;
    document.getElementById("status").textContent = `Updated ${new Date(d.now).toLocaleTimeString()}`;
    document.getElementById("dashboard").dataset.state = "live";
  }

  function showError(text) {
    const el = document.getElementById("error");
    el.textContent = text;
    el.hidden = !text;
  }

  async function poll() {
    timer = null;
    if (busy) return;
    busy = true;
    try {
      const resp = await fetch(API, { credentials: "same-origin", cache: "no-store" });
      if (resp.status === 401) {
        window.location.assign(LOGIN);
        return; // (finally still clears busy)
      }
      const body = await resp.json();
      if (!resp.ok) {
        showError(body.error || `error ${resp.status}`);
        if (resp.status === 403) return; // not a supervisor (any more): stop polling
      } else {
        showError("");
        draw(body);
      }
    } catch (err) {
      showError("Connection lost: retrying…");
      document.getElementById("dashboard").dataset.state = "offline";
    } finally {
      busy = false;
    }
    schedule();
  }

  function schedule() {
    if (timer === null && !document.hidden) timer = setTimeout(poll, REFRESH_MS);
  }

  document.getElementById("logout").addEventListener("click", async () => {
    try {
      await fetch("/api/logout", {
        method: "POST",
        credentials: "same-origin",
        headers: { "X-CSRF-Token": meta("csrf-token") },
      });
    } finally {
      window.location.assign("/");
    }
  });

  if (document.getElementById("dashboard")) {
    // (the 403 page has only the log-out button)
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && timer === null) poll();
    });
    poll();
  }
})();
