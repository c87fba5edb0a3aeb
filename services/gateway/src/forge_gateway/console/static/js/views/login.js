import { acceptPastedToken, finishLogin, startLogin } from '../auth.js';
import { errorBox, field, h } from '../dom.js';

export async function loginView({ main, config, query, returnTo }) {
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

  const tokenInput = h('textarea', { id: 'token-input', rows: 4, spellcheck: 'false', autocomplete: 'off', placeholder: 'eyJhbGciOi…' });
  const tokenForm = h('form', {
    id: 'token-form',
    onsubmit: (event) => {
      event.preventDefault();
      try {
        acceptPastedToken(tokenInput.value);
        tokenInput.value = '';
        go(target);
      } catch (err) {
        status.replaceChildren(errorBox(err, 'Using this token'));
      }
    },
  },
  field('Access token', tokenInput, 'A bearer token from your issuer (for example `forge dev token` under make run). It is kept for this tab only.'),
  h('button', { type: 'submit' }, 'Use this token'));

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
