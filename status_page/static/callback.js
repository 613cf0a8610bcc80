// The Schedule callback dialog: date and time (the agent's local time), Personal
// callback, the number (the contact's numbers, or New number... with its type and a
// From / To window in the contact's local time). Unchecking "Schedule callback" cancels
// the callback (and clears a standing error). The API's refusal (e.g. a time in the
// past) shows in the dialog's own alert area and the dialog stays open.
import { AGENT_TZ, ApiError, act, api, byId, el, info, show, wallClock } from './api.js';

const TYPES = { mobile: 'Mobile', work: 'Work', home: 'Home', other: 'Other' };
const NEW = '__new__';
const AREA = 'callback-error';

export const typeName = (t) => TYPES[t] || t;

// The agent's pending callback on this interaction's contact, if any.
export function callbackOf(c, callbacks) {
  return (callbacks || []).find((cb) => cb.contact_id === c.contact.id
    && (!cb.attempt_id || !c.attempt_id || cb.attempt_id === c.attempt_id)) || null;
}

function ref(ix) {
  return ix.kind === 'call' ? { attempt_id: ix.case.attempt_id } : { offer_id: ix.case.offer_id };
}

function toggle() {
  const on = byId('cb-on').checked;
  byId('cb-fields').disabled = !on;
  byId('cb-save').textContent = on ? 'Save callback' : 'Remove callback';
}

function numberChanged() {
  show('cb-new', byId('cb-number').value === NEW);
}

function fill(ix, existing) {
  const c = ix.case;
  byId('cb-on').checked = true;
  let date;
  let time;
  if (existing && existing.due_local) {
    [date, time] = existing.due_local.split(' ');
  } else {
    const w = wallClock(new Date(Date.now() + 3600 * 1000), AGENT_TZ);
    ({ date, time } = w);
  }
  byId('cb-date').value = date;
  byId('cb-time').value = time;
  byId('cb-personal').checked = existing ? !!existing.personal : false;
  const opts = c.numbers.map((n) => el('option', { value: n.number },
    `${typeName(n.type)} - ${n.number}`));
  opts.push(el('option', { value: NEW }, 'New number...'));
  const select = byId('cb-number');
  select.replaceChildren(...opts);
  select.value = c.dialed_number || (c.numbers[0] && c.numbers[0].number) || NEW;
  byId('cb-new-number').value = '';
  byId('cb-new-type').value = 'mobile';
  byId('cb-from').value = '';
  byId('cb-to').value = '';
  if (existing && existing.new_number) {
    select.value = NEW;
    byId('cb-new-number').value = existing.number || '';
    byId('cb-new-type').value = existing.number_type || 'other';
    const [from, to] = (existing.window || '-').split('-');
    byId('cb-from').value = from || '';
    byId('cb-to').value = to || '';
  } else if (existing && existing.number) {
    select.value = existing.number;
  }
  numberChanged();
  toggle();
}

function body(ix) {
  const out = {
    ...ref(ix),
    date: byId('cb-date').value,
    time: byId('cb-time').value,
    personal: byId('cb-personal').checked,
  };
  const number = byId('cb-number').value;
  if (number === NEW) {
    out.new_number = byId('cb-new-number').value.trim();
    out.new_number_type = byId('cb-new-type').value;
    if (byId('cb-from').value) out.window_from = byId('cb-from').value;
    if (byId('cb-to').value) out.window_to = byId('cb-to').value;
  } else if (number) {
    out.number = number;
  }
  return out;
}

function missing(b) {
  if (!b.date || !b.time) return 'Enter the date and time of the callback.';
  if ('new_number' in b && !b.new_number) return 'Enter the new number, or choose one of the list.';
  return null;
}

export function bindCallback(soon, currentIx, callbacks) {
  const dialog = byId('callback-dialog');
  let ix = null;
  byId('schedule').addEventListener('click', () => {
    ix = currentIx();
    if (!ix) return;
    byId(AREA).hidden = true;
    fill(ix, callbackOf(ix.case, callbacks()));
    dialog.showModal();
  });
  byId('cb-on').addEventListener('change', toggle);
  byId('cb-number').addEventListener('change', numberChanged);
  byId('cb-close').addEventListener('click', () => dialog.close());
  byId('callback-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (!ix) return;
    const button = byId('cb-save');
    if (!byId('cb-on').checked) {
      const q = new URLSearchParams(Object.entries(ref(ix)).map(([k, v]) => [k, String(v)]));
      const out = await act(button, () => api('DELETE', `/api/callbacks?${q}`), AREA);
      if (out) {
        dialog.close();
        info(out.cancelled ? 'Callback cancelled.' : 'No callback scheduled.');
      }
      soon();
      return;
    }
    const b = body(ix);
    const why = missing(b);
    const out = await act(button, async () => {
      if (why) throw new ApiError(0, why);
      return api('POST', '/api/callbacks', b);
    }, AREA);
    if (out) {
      dialog.close();
      const cb = out.callback;
      info(`Callback scheduled: ${cb.due_local || cb.due_at}${cb.number ? ` to ${cb.number}` : ''}.`);
    }
    soon();
  });
}
