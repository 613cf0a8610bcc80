// The agent page: My channels (phone session, Ready / Not ready), the campaign
// notification pop-up, My campaigns, and the live updates (EventSource on /api/events,
// which reconnects, plus a poll of the API as the fallback). The interaction view is in
// interaction.js, the schedule-callback dialog in callback.js.
import { act, api, byId, el, info, setText, show } from './api.js';
import { bindInteraction, renderInteraction } from './interaction.js';

const POLL_MS = 4000;
const RECONNECT_MS = 3000;
// The kinds of event the API streams to an agent; any of them means "look again".
const EVENT_KINDS = [
  'notification', 'call_connecting', 'call_ringing', 'call_answered', 'call_connected',
  'call_ended', 'agent_ready', 'agent_not_ready', 'agent_session_up',
  'agent_session_ended', 'offer_pushed', 'offer_expired', 'callback_due',
  'callback_withdrawn',
];
const STATUS = {
  created: 'Created', loaded: 'Loaded', running: 'Running', stopped: 'Stopped',
  unloaded: 'Unloaded',
};
const DELIVERY = { manual: 'Manual', 'semi-automatic': 'Semi-automatic', automatic: 'Automatic' };
const NOTICE_TITLES = { campaign_started: 'Campaign started', campaign_loaded: 'Campaign loaded' };

const state = { notifications: [], notice: null, dismissed: new Set() };

// ------------------------------------------------------------------ refresh
let refreshing = false;
let again = false;
let timer = null;

async function refresh() {
  if (refreshing) {
    again = true;
    return;
  }
  refreshing = true;
  try {
    const [me, camps, notes, ix, cbs] = await Promise.all([
      api('GET', '/api/me'),
      api('GET', '/api/campaigns'),
      api('GET', '/api/notifications'),
      api('GET', '/api/interaction'),
      api('GET', '/api/callbacks'),
    ]);
    renderChannels(me.live);
    state.notifications = notes.notifications;
    renderCampaigns(camps.campaigns);
    renderInteraction(ix.interaction, cbs.callbacks);
    renderNotice();
    document.body.dataset.loaded = 'yes';
  } catch (e) {
    info(`Could not refresh: ${e.message}`);
  } finally {
    refreshing = false;
    if (again) {
      again = false;
      soon();
    }
  }
}

// A refresh shortly (events often come in bursts).
export function soon() {
  if (timer !== null) return;
  timer = window.setTimeout(() => {
    timer = null;
    refresh();
  }, 150);
}

// ------------------------------------------------------------------ my channels
function renderChannels(live) {
  const up = live.session === 'up';
  setText('session-state', up ? 'Up' : 'Not started');
  setText('voice-state', live.ready_voice ? 'Ready' : 'Not ready');
  setText('preview-state', live.ready_preview ? 'Ready' : 'Not ready');
  show('phone-start', !up);
  show('phone-stop', up);
  show('voice-ready', !live.ready_voice);
  show('voice-not-ready', live.ready_voice);
  show('preview-ready', !live.ready_preview);
  show('preview-not-ready', live.ready_preview);
}

function bindChannels() {
  byId('phone-start').addEventListener('click', async (ev) => {
    info('Calling your phone: answer it to start the session...');
    const out = await act(ev.currentTarget, () => api('POST', '/api/agent/session'));
    info(out ? 'Phone session started.' : '');
    soon();
  });
  byId('phone-stop').addEventListener('click', async (ev) => {
    const out = await act(ev.currentTarget, () => api('DELETE', '/api/agent/session'));
    if (out) info('Phone session stopped.');
    soon();
  });
  const ready = (id, channel, on) => byId(id).addEventListener('click', async (ev) => {
    await act(ev.currentTarget, () => api('POST', '/api/agent/ready', { channel, ready: on }));
    soon();
  });
  ready('voice-ready', 'voice', true);
  ready('voice-not-ready', 'voice', false);
  ready('preview-ready', 'preview', true);
  ready('preview-not-ready', 'preview', false);
  byId('logout').addEventListener('click', async (ev) => {
    const out = await act(ev.currentTarget, () => api('POST', '/api/logout'));
    if (out) window.location.reload();
  });
}

// ------------------------------------------------------------------ my campaigns
async function getRecord(button, campaignId) {
  const out = await act(button, () => api('POST', `/api/campaigns/${campaignId}/record`));
  if (out && out.status === 'none') info(out.message || 'No record to call now.');
  else if (out) info('Record received.');
  soon();
  return out;
}

async function ackAll(button, campaignId) {
  const mine = state.notifications.filter((n) => n.campaign_id === campaignId);
  await act(button, async () => {
    for (const n of mine) await api('POST', `/api/notifications/${encodeURIComponent(n.id)}/ack`);
  });
}

function campaignCard(c) {
  const pending = state.notifications.some((n) => n.campaign_id === c.id);
  const buttons = el('div', { class: 'buttons' });
  if (c.mode === 'preview' && c.status === 'running') {
    buttons.append(el('button', {
      type: 'button', 'data-campaign': c.id,
      onclick: (ev) => getRecord(ev.currentTarget, c.id),
    }, 'Get record'));
  }
  if (pending) {
    buttons.append(el('button', {
      type: 'button',
      onclick: async (ev) => {
        await ackAll(ev.currentTarget, c.id);
        info(`Joined ${c.name}.`);
        soon();
      },
    }, 'Join'));
  }
  return el('li', { 'data-campaign-id': c.id },
    el('strong', {}, c.name),
    el('dl', { class: 'pairs' },
      el('dt', {}, 'Status'), el('dd', {}, STATUS[c.status] || c.status),
      el('dt', {}, 'Delivery mode'), el('dd', {}, DELIVERY[c.delivery_mode] || c.delivery_mode),
      el('dt', {}, 'Description'), el('dd', {}, c.description || '')),
    buttons);
}

let lastCampaigns = '';

function renderCampaigns(list) {
  const key = JSON.stringify([list, state.notifications.map((n) => n.campaign_id)]);
  if (key === lastCampaigns) return;
  lastCampaigns = key;
  show('no-campaigns', list.length === 0);
  byId('campaign-list').replaceChildren(...list.map(campaignCard));
}

// ------------------------------------------------------------------ the pop-up
function renderNotice() {
  const dialog = byId('notice');
  if (dialog.open) return;
  const next = state.notifications.find((n) => !state.dismissed.has(n.id));
  if (!next) return;
  state.notice = next;
  setText('notice-title', NOTICE_TITLES[next.kind] || 'Campaign');
  setText('notice-name', next.campaign);
  setText('notice-mode', DELIVERY[next.delivery_mode] || next.delivery_mode);
  setText('notice-description', next.description);
  show('notice-get-record', (next.actions || []).includes('get_record'));
  dialog.showModal();
}

function bindNotice() {
  const dialog = byId('notice');
  const finish = async (button, thenRecord) => {
    const n = state.notice;
    if (!n) return;
    state.dismissed.add(n.id);
    dialog.close();
    await act(button, () => api('POST', `/api/notifications/${encodeURIComponent(n.id)}/ack`));
    if (thenRecord && n.campaign_id) await getRecord(null, n.campaign_id);
    else info(`Joined ${n.campaign}.`);
    soon();
  };
  byId('notice-ok').addEventListener('click', (ev) => finish(ev.currentTarget, false));
  byId('notice-get-record').addEventListener('click', (ev) => finish(ev.currentTarget, true));
  dialog.addEventListener('cancel', () => {
    if (state.notice) state.dismissed.add(state.notice.id);
  });
}

// ------------------------------------------------------------------ live updates
let source = null;

function connectEvents() {
  source = new EventSource('/api/events');
  const onEvent = () => soon();
  for (const kind of EVENT_KINDS) source.addEventListener(kind, onEvent);
  source.onmessage = onEvent;
  source.onopen = () => {
    document.body.dataset.events = 'open';
  };
  source.onerror = () => {
    document.body.dataset.events = 'reconnecting';
    if (source.readyState === EventSource.CLOSED) {
      // Refused (e.g. the session ended): the browser gives up; try again later.
      source.close();
      window.setTimeout(connectEvents, RECONNECT_MS);
    }
  };
}

bindChannels();
bindNotice();
bindInteraction(soon);
connectEvents();
refresh();
window.setInterval(refresh, POLL_MS);
