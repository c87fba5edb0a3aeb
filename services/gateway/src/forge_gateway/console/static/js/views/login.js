import { finishLogin, startLogin } from '../auth.js';
import { errorBox, field, h } from '../dom.js';
import { signInWithToken } from '../session.js';

// Why a pasted token was not kept. A 401 is the gateway's verdict on the token (its message says
// which: expired, wrong issuer, bad signature); unreachable or 5xx says nothing about the token.
function tokenRefusal(err) {
  if (err?.name === 'ApiError' && (err.status === 0 || err.status >= 500)) {
    return [
      errorBox(err, 'Checking this token'),
      h('p', { class: 'muted' }, 'The gateway could not check the token, so it was not kept: try again when the gateway answers.'),
    ];
  }
  return [errorBox(err, 'Using this token')];
}

export async function loginView({ main, config, signal, query, returnTo }) {
  const target = returnTo || query.get('next') || '/runs';
  const go = (path) => {
    history.replaceState(null, '', path);
    window.dispatchEvent(new PopStateEvent('popstate'));
  };
  const status = h('div', { 'aria-live': 'polite' });
  const issuer = config?.oidc?.issuer;

  const loginButton = h('button', {
    type: 'button',
    id: 'login-issuer',
    disabled: !issuer || !config.oidc.client_id,
    onclick: async () => {
      status.replaceChildren(h('p', { class: 'muted' }, 'Redirecting to the issuer…'));
      try {
        await startLogin(config.oidc, target);
      } catch (err) {
        status.replaceChildren(errorBox(err, 'Log in'));
      }
    },
  }, 'Log in');

  const tokenStatus = h('div', { id: 'token-status', 'aria-live': 'polite' });
  const tokenInput = h('textarea', {
    id: 'token-input',
    rows: 4,
    spellcheck: 'false',
    autocomplete: 'off',
    placeholder: 'eyJhbGciOi…',
    'aria-describedby': 'token-status',
  });
  const tokenSubmit = h('button', { type: 'submit' }, 'Use this token');
  const tokenForm = h('form', {
    id: 'token-form',
    onsubmit: async (event) => {
      event.preventDefault();
      tokenSubmit.disabled = true;
      tokenInput.removeAttribute('aria-invalid');
      tokenStatus.replaceChildren(h('p', { class: 'muted' }, 'Checking the token with the gateway…'));
      try {
        await signInWithToken(tokenInput.value, { signal });
        tokenInput.value = '';
        go(target);
      } catch (err) {
        if (err?.name === 'AbortError') return; // the page was left: the check was cancelled
        tokenInput.setAttribute('aria-invalid', 'true');
        tokenStatus.replaceChildren(...tokenRefusal(err));
      } finally {
        tokenSubmit.disabled = false;
      }
    },
  },
  field('Access token', tokenInput, 'A bearer token from your issuer (for example `forge dev token` under make run). The gateway checks it (GET /v1/me) before it is kept, for this tab only.'),
  tokenStatus,
  tokenSubmit);

  main.append(
    h('h1', {}, 'Log in to Forge'),
    status,
    h('section', { class: 'card' },
      h('h2', {}, 'With your account'),
      h('p', {}, issuer ? `Through the issuer ${issuer} (authorization code with PKCE).` : 'No issuer is configured for the console.'),
      loginButton),
    h('section', { class: 'card' }, h('h2', {}, 'Use an access token'), tokenForm),
  );
}

loginView.notice = (text) => (text ? [h('p', { class: 'warning', role: 'status' }, text)] : []);

export async function callbackView({ main, config }) {
  main.append(h('h1', {}, 'Logging in…'));
  try {
    const target = await finishLogin(config.oidc, new URLSearchParams(location.search));
    history.replaceState(null, '', target);
    window.dispatchEvent(new PopStateEvent('popstate'));
  } catch (err) {
    main.append(errorBox(err, 'Log in'), h('p', {}, h('a', { href: '/login' }, 'Back to the login page')));
  }
}
