// Shared parts of the agent page: the JSON API client, a DOM builder that inserts every
// value as text (never as markup), the error / info areas, and wall-clock helpers.

const meta = (name) => {
  const m = document.querySelector(`meta[name="${name}"]`);
  return m ? m.getAttribute('content') || '' : '';
};

export const CSRF = meta('csrf-token');
export const AGENT_ID = meta('agent-id');
export const AGENT_TZ = meta('agent-timezone') || 'UTC';

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let reloading = false;

// A request to the API: JSON in and out, the CSRF token on every change. An error
// answer throws ApiError with the API's own message ({"error": "..."}).
export async function api(method, path, body) {
  const opts = { method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
  if (method !== 'GET') opts.headers['X-CSRF-Token'] = CSRF;
  if (body !== undefined) {
    opts.headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, opts);
  } catch (e) {
    throw new ApiError(0, 'The server cannot be reached. Check the connection and try again.');
  }
  let data = null;
  try {
    data = await resp.json();
  } catch (e) {
    data = null;
  }
  if (!resp.ok) {
    if (resp.status === 401 && !reloading) {
      // The session ended (log-out elsewhere, expiry): the server shows the log-in form.
      reloading = true;
      window.setTimeout(() => window.location.reload(), 1500);
    }
    const message = data && typeof data.error === 'string'
      ? data.error : `${method} ${path} failed (HTTP ${resp.status})`;
    throw new ApiError(resp.status, message);
  }
  return data;
}

// el('li', {class: 'x', onclick: fn}, 'text', child): children that are strings become
// text nodes; attribute values are set as attributes, never parsed as markup.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'text') node.textContent = String(value);
    else if (key === 'class') node.className = value;
    else if (key.startsWith('on') && typeof value === 'function') {
      node.addEventListener(key.slice(2), value);
    } else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export const byId = (id) => document.getElementById(id);

export function setText(id, value) {
  byId(id).textContent = value === null || value === undefined ? '' : String(value);
}

export function show(id, visible) {
  byId(id).hidden = !visible;
}

// The page's alert area (role=alert): the API's message, read out by screen readers.
export function showError(message, areaId = 'error') {
  const area = byId(areaId);
  area.textContent = message;
  area.hidden = false;
}

export function clearError(areaId = 'error') {
  const area = byId(areaId);
  area.textContent = '';
  area.hidden = true;
}

export function info(message) {
  setText('info', message);
}

// Run one agent action: the button is disabled meanwhile, the alert area cleared first
// and filled with the API's message when it fails. Returns the answer, or null.
export async function act(button, fn, areaId = 'error') {
  if (button) button.disabled = true;
  clearError(areaId);
  try {
    return await fn();
  } catch (e) {
    showError(e instanceof ApiError ? e.message : `Unexpected error: ${e.message}`, areaId);
    return null;
  } finally {
    if (button) button.disabled = false;
  }
}

// The wall-clock date (YYYY-MM-DD) and time (HH:MM) of an instant in a time zone.
export function wallClock(instant, timeZone) {
  let fmt;
  try {
    fmt = new Intl.DateTimeFormat('en-CA', {
      timeZone, year: 'numeric', month: '2-digit', day: '2-digit',
      hour: '2-digit', minute: '2-digit', hourCycle: 'h23',
    });
  } catch (e) {
    fmt = new Intl.DateTimeFormat('en-CA', {
      year: 'numeric', month: '2-digit', day: '2-digit',
      hour: '2-digit', minute: '2-digit', hourCycle: 'h23',
    });
  }
  const p = Object.fromEntries(fmt.formatToParts(instant).map((x) => [x.type, x.value]));
  return { date: `${p.year}-${p.month}-${p.day}`, time: `${p.hour}:${p.minute}` };
}

// A timestamp from the API, shown on the agent's clock.
export function when(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const w = wallClock(d, AGENT_TZ);
  return `${w.date} ${w.time}`;
}
