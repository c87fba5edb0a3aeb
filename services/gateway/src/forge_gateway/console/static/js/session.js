// Who is signed in, as the gateway says: GET /v1/me, asked once per sign-in or page load (the
// answer of a pasted token's check is kept, so signing in that way asks once in all). The token's
// own claims are never shown as the identity: only the gateway verifies them.
import { api, describeToken } from './api.js';
import { clearToken, getToken, pastedToken, setToken } from './auth.js';

// generation: bumped at every sign-in and sign-out, so that an answer about an earlier session
// that arrives late is dropped instead of being shown as the new one.
const session = { generation: 0, caller: null, error: null, pending: null };

function restart(caller = null) {
  session.generation += 1;
  session.caller = caller;
  session.error = null;
  session.pending = null;
}

// The caller (GET /v1/me's body) of the session's token, once known; null before or signed out.
export function signedInAs() {
  return getToken() ? session.caller : null;
}

// Why the last GET /v1/me failed (gateway unreachable, 5xx), until the next attempt.
export function whoAmIError() {
  return getToken() ? session.error : null;
}

// Resolves with the caller, asking the gateway unless it already answered for this sign-in; a
// failed attempt is retried by the next call (the next page shown). A 401 goes through api(): a
// refresh when the issuer login has a refresh token, else 'forge:unauthorized' ends the session.
export function whoAmI() {
  if (!getToken()) return Promise.resolve(null);
  if (session.caller) return Promise.resolve(session.caller);
  if (!session.pending) {
    const { generation } = session;
    const current = () => generation === session.generation;
    session.pending = api('/me').then(
      (caller) => {
        if (current()) Object.assign(session, { caller, error: null, pending: null });
        return caller;
      },
      (err) => {
        if (current()) Object.assign(session, { error: err, pending: null });
        throw err;
      },
    );
  }
  return session.pending;
}

// "Use an access token": kept only once GET /v1/me accepts it. Throws the gateway's refusal (an
// ApiError: 401 with its message, 0 when unreachable, 5xx) or the shape error, keeping nothing.
// Leaving the page (signal) cancels the check.
export async function signInWithToken(text, { signal } = {}) {
  const token = pastedToken(text);
  const caller = await describeToken(token, { signal });
  // The pasted token replaces the whole session, an issuer login's refresh token included.
  clearToken();
  setToken(token, null);
  restart(caller);
  return caller;
}

export function signOut() {
  clearToken();
  restart();
}
