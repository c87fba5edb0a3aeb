// The console's shell: loads the configuration, routes the address bar to a view, keeps the
// header's user box current, and turns any uncaught failure into a visible message.
import { expired, getToken, refreshToken } from './auth.js';
import { append, clear, errorBox, fmtTime, h } from './dom.js';
import { signedInAs, signOut, whoAmI, whoAmIError } from './session.js';
import { approvalsView } from './views/approvals.js';
import { environmentsView } from './views/environments.js';
import { callbackView, loginView } from './views/login.js';
import { releasesView } from './views/releases.js';
import { runView } from './views/run.js';
import { runsView } from './views/runs.js';
import { webhookView, webhooksView } from './views/webhooks.js';

const ROUTES = [
  [/^\/$/, null],
  [/^\/runs\/?$/, runsView],
  [/^\/runs\/([^/]+)\/?$/, runView],
  [/^\/releases\/?$/, releasesView],
  [/^\/environments\/?$/, environmentsView],
  [/^\/approvals\/?$/, approvalsView],
  [/^\/webhooks\/?$/, webhooksView],
  [/^\/webhooks\/([^/]+)\/?$/, webhookView],
  [/^\/login\/?$/, loginView],
  [/^\/console\/callback\/?$/, callbackView],
];
const PUBLIC_VIEWS = new Set([loginView, callbackView]);

let config = null;
let current = null; // AbortController of the view on screen
let signInNotice = null; // why the session just ended, said once above the login form

export function navigate(path, { replace = false } = {}) {
  if (replace) history.replaceState(null, '', path);
  else history.pushState(null, '', path);
  render();
}

// The token is no longer accepted: forget it and ask for a sign-in where the user is (the login
// form takes them back to this page).
function endSession(notice) {
  signOut();
  signInNotice = notice;
}

// Who the gateway says the caller is (GET /v1/me): the name, else the user name, else the
// subject; the identity the platform records them as, when that differs; the roles; and the one
// repository a repository-bound token may act on.
function callerSummary(me) {
  const shown = me.name || me.username || me.subject;
  const about = [me.identity !== shown ? `acts as ${me.identity}` : null, `token expires ${fmtTime(me.expires_at)}`];
  return [
    h('span', { class: 'sr-only' }, 'Signed in as'),
    h('span', { class: 'user', title: about.filter(Boolean).join(' · ') }, shown),
    me.service_account ? h('span', { class: 'badge' }, 'service account') : null,
    h('span', { class: 'sr-only' }, 'with the roles'),
    h('span', { class: 'roles' }, me.roles.join(', ') || 'no roles'),
    me.repository ? h('span', { class: 'repository', title: 'this token may act on this repository only' }, `limited to ${me.repository}`) : null,
  ];
}

function renderWho() {
  const who = clear(document.getElementById('who'));
  if (!getToken()) {
    who.append(h('a', { href: '/login' }, 'Log in'));
    return;
  }
  const me = signedInAs();
  const failure = whoAmIError();
  if (me) append(who, callerSummary(me));
  else if (failure) who.append(h('span', { class: 'user', title: failure.message }, 'Signed in (identity unavailable)'));
  else who.append(h('span', { class: 'user', 'aria-busy': 'true' }, 'Signed in'));
  who.append(h('button', {
    type: 'button',
    class: 'small',
    onclick: () => { signOut(); navigate('/login'); },
  }, 'Log out'));
}

function markNav(path) {
  for (const link of document.querySelectorAll('nav a[data-nav]')) {
    const active = path.startsWith(`/${link.dataset.nav}`);
    if (active) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
}

async function render() {
  current?.abort();
  current = new AbortController();
  const { signal } = current;
  const path = location.pathname;
  const main = clear(document.getElementById('main'));
  markNav(path);
  let view = null;
  let match = null;
  for (const [pattern, candidate] of ROUTES) {
    match = pattern.exec(path);
    if (match) { view = candidate; break; }
  }
  if (match && view === null) {
    navigate('/runs', { replace: true });
    return;
  }
  // A token past its expiry is renewed once (an issuer login's refresh token), else forgotten.
  if (getToken() && expired()) {
    await refreshToken();
    if (signal.aborted) return;
    if (expired()) endSession('Your token has expired: log in again.');
  }
  const notice = signInNotice; // said on this page only
  signInNotice = null;
  renderWho();
  // Asked once per sign-in or page load; each later page reuses the answer (drawn just above).
  if (getToken() && !signedInAs()) whoAmI().then(renderWho, renderWho);
  if (!view) {
    main.append(h('h1', {}, 'Page not found'), h('p', {}, h('a', { href: '/runs' }, 'Go to runs')));
    return;
  }
  if (!PUBLIC_VIEWS.has(view) && !getToken()) {
    const returnTo = path + location.search;
    main.append(...loginView.notice(notice));
    await loginView({ main, config, signal, query: new URLSearchParams(), returnTo });
    return;
  }
  if (view === loginView) main.append(...loginView.notice(notice));
  const ctx = { main, config, signal, params: match.slice(1), query: new URLSearchParams(location.search), navigate };
  try {
    await view(ctx);
  } catch (err) {
    if (err?.name === 'AbortError' || signal.aborted) return;
    main.append(errorBox(err, 'Loading this page'));
  }
  main.focus({ preventScroll: true });
}

// In-app links: same-origin, unmodified, left clicks are routed without a page load.
document.addEventListener('click', (event) => {
  if (event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const link = event.target.closest('a[href]');
  if (!link || link.target || link.hasAttribute('download')) return;
  const url = new URL(link.href);
  if (url.origin !== location.origin || url.pathname.startsWith('/v1') || url.pathname.startsWith('/ui/')) return;
  event.preventDefault();
  navigate(url.pathname + url.search);
});
window.addEventListener('popstate', render);
// A 401 from any request with the session's token (after the one refresh authFetch() tries): API
// calls, GET /v1/me, the run's event stream, a step's log. The gateway no longer accepts the token
// (expired, revoked key, another issuer).
window.addEventListener('forge:unauthorized', (event) => {
  if (!getToken()) return; // several calls of one page refused at once: the first one ends it
  endSession(`The gateway no longer accepts your token (${event.detail?.message || 'HTTP 401'}): log in again.`);
  render();
});
for (const kind of ['error', 'unhandledrejection']) {
  window.addEventListener(kind, (event) => {
    const err = event.reason || event.error || new Error(event.message || 'unexpected error');
    if (err?.name === 'AbortError') return;
    document.getElementById('main')?.prepend(errorBox(err, 'The page'));
  });
}

async function start() {
  const inline = document.querySelector('meta[name="forge-console-config"]')?.content;
  if (inline) {
    try {
      config = JSON.parse(inline);
      await render();
      return;
    } catch {
      // fall back to the endpoint
    }
  }
  try {
    const resp = await fetch('/ui/config.json', { cache: 'no-store' });
    config = resp.ok ? await resp.json() : { oidc: {}, environments: ['dev', 'staging', 'production'] };
  } catch {
    config = { oidc: {}, environments: ['dev', 'staging', 'production'] };
  }
  await render();
}

start();
