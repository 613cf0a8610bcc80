// The log-in form: POST /api/login, then reload: the server renders the agent page.
const form = document.getElementById('login-form');
const error = document.getElementById('login-error');

// Where to go once logged in: ?next=<a path of this site> (e.g. the supervisor
// dashboard sends people here); anything else (another site, //host) is ignored.
function nextPath() {
  const next = new URLSearchParams(window.location.search).get('next');
  return next && /^\/[A-Za-z0-9_\-/]*$/.test(next) && !next.startsWith('//') ? next : null;
}

function showError(message) {
  error.textContent = message;
  error.hidden = false;
}

form.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  error.hidden = true;
  const body = {
    agent_id: document.getElementById('login-agent-id').value.trim(),
    password: document.getElementById('login-password').value,
  };
  if (!body.agent_id || !body.password) {
    showError('Enter your agent ID and password.');
    return;
  }
  let resp;
  try {
    resp = await fetch('/api/login', {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    });
  } catch (e) {
    showError('The server cannot be reached: ' + e.message);
    return;
  }
  if (resp.ok) {
    const next = nextPath();
    if (next) window.location.assign(next);
    else window.location.reload();
    return;
  }
  let message = 'Log-in failed (' + resp.status + ')';
  try {
    const data = await resp.json();
    if (data && typeof data.error === 'string') message = data.error;
  } catch (e) { /* not JSON: keep the status */ }
  showError(message);
});
