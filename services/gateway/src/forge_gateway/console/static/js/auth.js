// Tokens live in sessionStorage only: they die with the tab and are never put in a URL.
// "Log in" is the OAuth 2.0 authorization code flow with PKCE (RFC 7636, S256) for a public
// client, against the issuer's OpenID discovery document.

const TOKEN = 'forge.token';
const REFRESH = 'forge.refresh';
const PENDING = 'forge.login';

export function getToken() {
  return sessionStorage.getItem(TOKEN);
}

export function setToken(access, refresh) {
  sessionStorage.setItem(TOKEN, access);
  if (refresh) sessionStorage.setItem(REFRESH, refresh);
  else sessionStorage.removeItem(REFRESH);
}

export function clearToken() {
  for (const key of [TOKEN, REFRESH, 'forge.tokenEndpoint', 'forge.clientId']) sessionStorage.removeItem(key);
}

function base64UrlDecode(text) {
  const padded = text.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((text.length + 3) % 4);
  const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

function base64UrlEncode(bytes) {
  let text = '';
  for (const b of new Uint8Array(bytes)) text += String.fromCharCode(b);
  return btoa(text).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

// The token's claims, for display and for hiding actions the user's roles do not allow. Only
// the servers verify tokens; nothing here is trusted for access decisions.
export function claims(token = getToken()) {
  if (!token) return null;
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  try {
    return JSON.parse(base64UrlDecode(parts[1]));
  } catch {
    return null;
  }
}

// The same identity the services record (email, else username, else subject).
export function identity(c = claims()) {
  if (!c) return '';
  return c.email || c.preferred_username || c.sub || '';
}

export function roles(c = claims()) {
  if (!c) return [];
  const found = new Set([...(c.realm_access?.roles || []), ...(Array.isArray(c.roles) ? c.roles : [])]);
  return [...found];
}

export function hasRole(...wanted) {
  const mine = roles();
  return wanted.some((r) => mine.includes(r));
}

export function expired(c = claims()) {
  return Boolean(c && typeof c.exp === 'number' && c.exp * 1000 <= Date.now());
}

// A pasted token as it goes into the Authorization header: "Bearer " and line breaks (a long
// token wraps when copied from a terminal) removed. Only the gateway says whether it is valid
// (session.js asks GET /v1/me before keeping it); this only refuses what no header can carry.
export function pastedToken(text) {
  const token = text.trim().replace(/^Bearer\s+/i, '').replace(/\s+/g, '');
  if (!token) throw new Error('Paste an access token first.');
  if (!/^[\x21-\x7e]+$/.test(token)) {
    throw new Error('That is not an access token: it has characters no token has (a JWT is three base64url parts separated by dots).');
  }
  return token;
}

async function discover(issuer) {
  const url = `${issuer.replace(/\/$/, '')}/.well-known/openid-configuration`;
  let resp;
  try {
    resp = await fetch(url, { headers: { Accept: 'application/json' } });
  } catch (err) {
    throw new Error(`The issuer ${issuer} cannot be reached from this page (${err.message}).`);
  }
  if (!resp.ok) throw new Error(`The issuer's discovery document ${url} answered HTTP ${resp.status}.`);
  const doc = await resp.json();
  if (!doc.authorization_endpoint || !doc.token_endpoint) {
    throw new Error('The issuer offers no browser login (its discovery document has no authorization_endpoint): use an access token.');
  }
  return doc;
}

// Under /console/ as the realm's redirect URIs of the public client expect
// (deploy/keycloak/forge-realm.json: "{origin}/console/*").
export function redirectUri() {
  return `${location.origin}/console/callback`;
}

export async function startLogin(oidc, returnTo) {
  const doc = await discover(oidc.issuer);
  const verifier = base64UrlEncode(crypto.getRandomValues(new Uint8Array(32)));
  const state = base64UrlEncode(crypto.getRandomValues(new Uint8Array(16)));
  const challenge = base64UrlEncode(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier)));
  sessionStorage.setItem(PENDING, JSON.stringify({ verifier, state, tokenEndpoint: doc.token_endpoint, returnTo }));
  const url = new URL(doc.authorization_endpoint);
  url.search = new URLSearchParams({
    response_type: 'code',
    client_id: oidc.client_id,
    redirect_uri: redirectUri(),
    scope: oidc.scope || 'openid',
    state,
    code_challenge: challenge,
    code_challenge_method: 'S256',
  }).toString();
  location.assign(url.toString());
}

async function tokenRequest(endpoint, form) {
  let resp;
  try {
    resp = await fetch(endpoint, {
      method: 'POST',
      headers: { 'Content-Type': 'application/x-www-form-urlencoded', Accept: 'application/json' },
      body: new URLSearchParams(form).toString(),
    });
  } catch (err) {
    throw new Error(`The issuer's token endpoint cannot be reached from this page (${err.message}).`);
  }
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok || !body.access_token) {
    throw new Error(`The issuer refused the login: ${body.error_description || body.error || `HTTP ${resp.status}`}`);
  }
  return body;
}

// The redirect back from the issuer: checks state, trades the code (with the verifier) for tokens.
export async function finishLogin(oidc, params) {
  const pending = JSON.parse(sessionStorage.getItem(PENDING) || 'null');
  sessionStorage.removeItem(PENDING);
  if (params.get('error')) throw new Error(`The issuer refused the login: ${params.get('error_description') || params.get('error')}`);
  if (!pending || !params.get('state') || params.get('state') !== pending.state) {
    throw new Error('This login answer does not belong to a login started in this tab; start again.');
  }
  const body = await tokenRequest(pending.tokenEndpoint, {
    grant_type: 'authorization_code',
    code: params.get('code') || '',
    redirect_uri: redirectUri(),
    client_id: oidc.client_id,
    code_verifier: pending.verifier,
  });
  setToken(body.access_token, body.refresh_token);
  sessionStorage.setItem('forge.tokenEndpoint', pending.tokenEndpoint);
  sessionStorage.setItem('forge.clientId', oidc.client_id);
  return pending.returnTo || '/runs';
}

// One refresh with the refresh token of an issuer login; false when there is none. Requests
// refused together share one: the realm rotates refresh tokens and takes each once
// (deploy/keycloak/forge-realm.json: revokeRefreshToken), so a second refresh with the same one
// would fail, and the session would end although the first one renewed it.
let refreshing = null;

export function refreshToken() {
  refreshing ??= renew().finally(() => { refreshing = null; });
  return refreshing;
}

async function renew() {
  const refresh = sessionStorage.getItem(REFRESH);
  const endpoint = sessionStorage.getItem('forge.tokenEndpoint');
  const clientId = sessionStorage.getItem('forge.clientId');
  if (!refresh || !endpoint || !clientId) return false;
  try {
    const body = await tokenRequest(endpoint, { grant_type: 'refresh_token', refresh_token: refresh, client_id: clientId });
    setToken(body.access_token, body.refresh_token || refresh);
    return true;
  } catch {
    return false;
  }
}
