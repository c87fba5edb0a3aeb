// The only way the console talks to Forge: the public /v1 API with the user's bearer token.
import { getToken, refreshToken } from './auth.js';

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.details = details || {};
  }
}

// The platform's error envelope {"error": {code, message, details}}, else what the body says.
export async function errorFrom(resp) {
  const text = await resp.text().catch(() => '');
  try {
    const body = JSON.parse(text);
    if (body && body.error && typeof body.error === 'object') {
      return new ApiError(resp.status, body.error.code || '', body.error.message || resp.statusText, body.error.details);
    }
  } catch {
    // not JSON: fall through
  }
  return new ApiError(resp.status, '', text.slice(0, 300) || resp.statusText || `HTTP ${resp.status}`, {});
}

// "owner/name" as two path segments, each percent-encoded (the services accept both encodings).
export function repoPath(repository) {
  return repository.split('/').map(encodeURIComponent).join('/');
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== '') q.set(key, String(value));
  }
  const text = q.toString();
  return text ? `?${text}` : '';
}

function authHeaders(extra = {}) {
  const token = getToken();
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

// Every request of the console with the session's token goes through here (api(), the run's
// event stream, a step's log): fetch() with the token; on a 401 an issuer login's access token is
// renewed once with its refresh token (or already was, by a request refused before this one) and
// the request sent again with the new one. A 401 that remains ends the session
// ('forge:unauthorized', app.js) and is thrown as an ApiError; any other answer is returned as it
// is, and a failed or aborted fetch() throws what fetch() throws.
export async function authFetch(url, { headers = {}, ...init } = {}) {
  const sent = getToken();
  let resp = await fetch(url, { ...init, headers: authHeaders(headers) });
  const renewed = () => Boolean(getToken()) && getToken() !== sent;
  if (resp.status === 401 && (renewed() || (await refreshToken()))) {
    resp = await fetch(url, { ...init, headers: authHeaders(headers) });
  }
  if (resp.status === 401) {
    const err = await errorFrom(resp);
    window.dispatchEvent(new CustomEvent('forge:unauthorized', { detail: err }));
    throw err;
  }
  return resp;
}

export async function api(path, { method = 'GET', body, signal, params } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let resp;
  try {
    resp = await authFetch(`/v1${path}${params ? query(params) : ''}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: 'no-store',
    });
  } catch (err) {
    if (err.name === 'AbortError' || err instanceof ApiError) throw err;
    throw new ApiError(0, 'network_error', `The gateway cannot be reached (${err.message})`, {});
  }
  if (!resp.ok) throw await errorFrom(resp);
  if (resp.status === 204) return null;
  return resp.json();
}

// GET /v1/me with a token that is not the session's yet: a pasted token is checked before it is
// kept. Unlike authFetch(), a 401 neither refreshes nor ends the session: the session it would
// touch is not this token's.
export async function describeToken(token, { signal } = {}) {
  let resp;
  try {
    resp = await fetch('/v1/me', {
      headers: { Accept: 'application/json', Authorization: `Bearer ${token}` },
      signal,
      cache: 'no-store',
    });
  } catch (err) {
    if (err.name === 'AbortError') throw err;
    throw new ApiError(0, 'network_error', `The gateway cannot be reached (${err.message})`, {});
  }
  if (!resp.ok) throw await errorFrom(resp);
  return resp.json();
}
