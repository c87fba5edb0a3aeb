// The console's shell: loads the configuration, routes the address bar to a view, keeps the
// header's user box current, and turns any uncaught failure into a visible message.
import { clearToken, claims, expired, getToken, identity, refreshToken, roles } from './auth.js';
import { clear, errorBox, h } from './dom.js';
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

export function navigate(path, { replace = false } = {}) {
  if (replace) history.replaceState(null, '', path);
  else history.pushState(null, '', path);
  render();
}

function renderWho() {
  const who = clear(document.getElementById('who'));
  const c = claims();
  if (!getToken() || !c) {
    who.append(h('a', { href: '/login' }, 'Log in'));
    return;
  }
  who.append(
    h('span', { class: 'user', title: `roles: ${roles(c).join(', ') || 'none'}` }, identity(c)),
    h('span', { class: 'roles muted' }, roles(c).join(', ')),
    h('button', {
      type: 'button',
      class: 'small',
      onclick: () => { clearToken(); navigate('/login'); },
    }, 'Log out'),
  );
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
  renderWho();
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
  if (!view) {
    main.append(h('h1', {}, 'Page not found'), h('p', {}, h('a', { href: '/runs' }, 'Go to runs')));
    return;
  }
  if (!PUBLIC_VIEWS.has(view) && getToken() && expired()) await refreshToken();
  if (signal.aborted) return;
  if (!PUBLIC_VIEWS.has(view) && (!getToken() || expired())) {
    const returnTo = path + location.search;
    main.append(...loginView.notice(expired() ? 'Your token has expired: log in again.' : null));
    await loginView({ main, config, signal, query: new URLSearchParams(), returnTo });
    return;
  }
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
window.addEventListener('forge:unauthorized', () => renderWho());
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
