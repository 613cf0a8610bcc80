// The interaction view: Origin, state, case information, caller ID choice and the
// controls that fit the state (preview: Dial / Decline; pushed: Accept / Reject; call:
// End, Hold, Resume, DTMF, Transfer, Conference, Consultation; wrap-up: disposition,
// Mark done, Done and stop). Every value goes in as text.
import { act, api, byId, el, info, setText, show, when } from './api.js';
import { bindCallback, callbackOf, typeName } from './callback.js';

const STATES = {
  previewing: 'Previewing', dialing: 'Dialing...', connecting: 'Connecting...',
  connected: 'Connected', wrapup: 'Wrap-up', not_connected: 'Not connected',
  done: 'Done', declined: 'Declined', expired: 'Expired',
};
const IN_CALL = ['hold', 'resume', 'send-dtmf', 'transfer', 'conference', 'consult-start',
  'consult-cancel', 'consult-transfer', 'consult-conference'];

let current = null; // {kind, case} from GET /api/interaction
let myCallbacks = [];
let lastCase = '';
const held = new Set(); // attempt ids this page put on hold (the API has no hold state)
const consulting = new Set();

export const currentInteraction = () => current;

function pushed(c) {
  return c.campaign.mode !== 'preview';
}

// Rebuild a <select>'s options only when they change, keeping the agent's choice.
function options(select, items, placeholder) {
  const key = JSON.stringify([items, placeholder]);
  if (select.dataset.key === key) return;
  const chosen = select.value;
  select.dataset.key = key;
  const opts = items.map(([value, label]) => el('option', { value }, label));
  if (placeholder !== null) opts.unshift(el('option', { value: '' }, placeholder));
  select.replaceChildren(...opts);
  if (items.some(([v]) => v === chosen)) select.value = chosen;
}

function renderCallerId(c, offer) {
  const ask = offer && c.ask_caller_id && c.caller_ids.length > 0;
  show('caller-id-row', ask);
  if (ask) options(byId('caller-id'), c.caller_ids.map((x) => [x, x]), 'Choose a caller ID');
}

function renderDisposition(c, closing) {
  const codes = c.disposition_codes || [];
  show('disposition-row', closing && codes.length > 0);
  show('disposition-required', c.disposition_required);
  byId('disposition').required = !!c.disposition_required;
  options(byId('disposition'), codes.map((x) => [x, x]), 'Choose a disposition');
}

export function renderInteraction(ix, callbacks) {
  current = ix;
  myCallbacks = callbacks || [];
  show('no-interaction', !ix);
  show('ix', !!ix);
  if (!ix) {
    lastCase = '';
    return;
  }
  const c = ix.case;
  const aid = c.attempt_id;
  setText('origin', c.origin);
  setText('ix-state', STATES[c.state] || c.state || '');
  setText('ix-number', c.dialed_number || '');
  const offer = ix.kind === 'offer' && c.state === 'previewing';
  const isPushed = offer && pushed(c);
  show('offer-controls', offer);
  show('dial', offer && !isPushed);
  show('decline', offer && !isPushed);
  show('accept', isPushed);
  show('reject', isPushed);
  renderCallerId(c, offer);
  const live = ix.kind === 'call' && ['connected', 'dialing', 'connecting'].includes(c.state);
  show('call-controls', live);
  for (const id of IN_CALL) byId(id).disabled = c.state !== 'connected';
  show('hold-state', live && held.has(aid));
  show('consult-state', live && consulting.has(aid));
  const closing = ix.kind === 'call' && ['wrapup', 'not_connected'].includes(c.state);
  show('done-controls', closing);
  show('done-stop', closing && c.campaign.mode === 'preview');
  renderDisposition(c, closing);
  const cb = callbackOf(c, myCallbacks);
  show('schedule', offer || ix.kind === 'call');
  setText('schedule', cb ? 'Callback scheduled' : 'Schedule callback');
  show('callback-summary', !!cb);
  if (cb) {
    const to = cb.number ? ` to ${cb.number}` : '';
    const win = cb.window ? ` (${cb.window})` : '';
    setText('callback-summary', `Callback: ${cb.due_local || when(cb.due_at)}`
      + `${cb.personal ? ', personal' : ''}${to}${win}`);
  }
  const key = JSON.stringify(c);
  if (key !== lastCase) {
    lastCase = key;
    byId('case-body').replaceChildren(...caseInfo(c));
  }
}

// ------------------------------------------------------------------ case information
function list(title, items) {
  return [
    el('h4', {}, title),
    items.length ? el('ul', { class: 'plain' }, ...items.map((t) => el('li', {}, t)))
      : el('p', { class: 'hint' }, 'None.'),
  ];
}

function caseInfo(c) {
  const k = c.contact;
  const pairs = [
    ['Name', k.name], ['Contact key', k.external_key], ['Time zone', k.timezone || 'unknown'],
    ['Contact state', k.state], ['Attempts', k.attempts], ['Campaign', c.campaign.name],
    ...Object.entries(k.fields || {}),
  ];
  const dl = el('dl', { class: 'pairs', id: 'case-fields' });
  for (const [name, value] of pairs) {
    dl.append(el('dt', {}, name), el('dd', {}, value === null ? '' : String(value)));
  }
  const numbers = c.numbers.map((n) => `${typeName(n.type)}: ${n.number}${n.dialed ? ' (dialed)' : ''}`);
  const attempts = c.attempts.map((a) => `#${a.attempt_no} ${when(a.at)} ${a.number}: `
    + `${a.result || a.state}${a.disposition ? `, ${a.disposition}` : ''}`
    + `${a.callback ? ' (callback)' : ''}`);
  const dispositions = c.dispositions.map((d) => `${when(d.at)} ${d.code} (${d.agent_id || ''})`);
  const dtmf = c.dtmf.map((d) => `${when(d.at)} ${d.digits}`);
  const history = c.history.map((h) => `${when(h.at)} ${h.text || h.kind}`);
  return [
    dl,
    ...list('Numbers', numbers),
    ...list('Attempt history', attempts),
    ...list('Dispositions', dispositions),
    el('div', { id: 'dtmf-sent' }, ...list('DTMF sent', dtmf)),
    ...list('Case history', history),
  ];
}

// ------------------------------------------------------------------ actions
function bindOffer(soon) {
  const offerId = () => current && current.case.offer_id;
  const callerId = () => {
    const row = byId('caller-id-row');
    const v = byId('caller-id').value;
    return row.hidden || !v ? {} : { caller_id: v };
  };
  byId('dial').addEventListener('click', async (ev) => {
    const out = await act(ev.currentTarget,
      () => api('POST', `/api/offers/${offerId()}/dial`, callerId()));
    if (out) info('Dialing...');
    soon();
  });
  byId('accept').addEventListener('click', async (ev) => {
    const out = await act(ev.currentTarget,
      () => api('POST', `/api/offers/${offerId()}/accept`, { dial: true, ...callerId() }));
    if (out) info('Accepted.');
    soon();
  });
  byId('reject').addEventListener('click', async (ev) => {
    const out = await act(ev.currentTarget, () => api('POST', `/api/offers/${offerId()}/reject`));
    if (out) info('Rejected: the record goes back to the top of the list.');
    soon();
  });
  const decline = byId('decline-dialog');
  byId('decline').addEventListener('click', () => decline.showModal());
  byId('decline-cancel').addEventListener('click', () => decline.close());
  const choose = (id, choice, text) => byId(id).addEventListener('click', async (ev) => {
    const id0 = offerId();
    decline.close();
    const out = await act(ev.currentTarget,
      () => api('POST', `/api/offers/${id0}/decline`, { choice }));
    if (out) info(text);
    soon();
  });
  choose('decline-later', 'later', 'Declined: this contact will be called later.');
  choose('decline-dnc', 'dnc', 'Declined: this contact will not be called.');
}

function bindCall(soon) {
  const aid = () => current && current.case.attempt_id;
  const call = (id, action, body, after) => byId(id).addEventListener('click', async (ev) => {
    const attempt = aid();
    const payload = body ? body() : undefined;
    if (payload === null) return;
    const out = await act(ev.currentTarget,
      () => api('POST', `/api/calls/${encodeURIComponent(attempt)}/${action}`, payload));
    if (out && after) after(attempt, payload);
    soon();
  });
  const target = () => ({ target: byId('target').value.trim() });
  call('end', 'end', null, () => info('Call ended.'));
  call('hold', 'hold', null, (a) => { held.add(a); info('On hold.'); });
  call('resume', 'resume', null, (a) => { held.delete(a); info('Resumed.'); });
  call('send-dtmf', 'dtmf', () => ({ digits: byId('dtmf-digits').value.trim() }), (a, p) => {
    byId('dtmf-digits').value = '';
    info(`DTMF sent: ${p.digits}`);
  });
  call('transfer', 'transfer', target, () => info('Transferred.'));
  call('conference', 'conference', target, () => info('Conference started.'));
  call('consult-start', 'consult_start', target, (a) => { consulting.add(a); info('Consultation started.'); });
  const ended = (text) => (a) => { consulting.delete(a); info(text); };
  call('consult-cancel', 'consult_cancel', null, ended('Consultation ended.'));
  call('consult-transfer', 'consult_transfer', null, ended('Consultation completed as transfer.'));
  call('consult-conference', 'consult_conference', null, ended('Consultation completed as conference.'));
  for (const key of byId('keypad').querySelectorAll('button[data-key]')) {
    key.addEventListener('click', () => {
      const input = byId('dtmf-digits');
      if (input.value.length < 32) input.value += key.dataset.key;
    });
  }
  const done = (id, stop) => byId(id).addEventListener('click', async (ev) => {
    const attempt = aid();
    const body = stop ? { stop: true } : {};
    const code = byId('disposition').value;
    if (!byId('disposition-row').hidden && code) body.disposition = code;
    const out = await act(ev.currentTarget,
      () => api('POST', `/api/calls/${encodeURIComponent(attempt)}/done`, body));
    if (out) info(stop ? 'Done. No new records until you get one again.' : 'Marked done.');
    soon();
  });
  done('mark-done', false);
  done('done-stop', true);
}

export function bindInteraction(soon) {
  bindOffer(soon);
  bindCall(soon);
  bindCallback(soon, () => current, () => myCallbacks);
}
