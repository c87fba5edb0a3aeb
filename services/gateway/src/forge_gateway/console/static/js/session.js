// The session's token, kept only once the gateway accepts it: a pasted token is checked with
// GET /v1/me before anything is stored.
import { describeToken } from './api.js';
import { clearToken, pastedToken, setToken } from './auth.js';

// "Use an access token": kept only once GET /v1/me accepts it. Throws the gateway's refusal (an
// ApiError: 401 with its message, 0 when unreachable, 5xx) or the shape error, keeping nothing.
// Leaving the page (signal) cancels the check.
export async function signInWithToken(text, { signal } = {}) {
  const token = pastedToken(text);
  const caller = await describeToken(token, { signal });
  // The pasted token replaces the whole session, an issuer login's refresh token included.
  clearToken();
  setToken(token, null);
  return caller;
}
