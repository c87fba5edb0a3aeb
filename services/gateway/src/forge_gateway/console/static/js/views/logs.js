// A step's log: GET /v1/steps/{id}/logs (following while the step runs) where the API has it,
// else the step's presigned logs_url read directly from the log store.
import { authFetch, errorFrom } from '../api.js';
import { h, pause, TERMINAL } from '../dom.js';

const MAX_CHARS = 1 << 20;
// A followed log that ends this soon with nothing new counts as a failure; so many end the follow.
const QUICK_END_MS = 2000;
const MAX_QUICK_ENDS = 3;

export function logPanel(step, { logs, signal, open = false, key }) {
  let entry = logs.get(key);
  if (!entry) {
    const pre = h('pre', { class: 'log', tabindex: '0', 'aria-label': `Log of ${step.name}` });
    const el = h('details', { class: 'log-panel', open }, h('summary', {}, 'Log'), pre);
    entry = { el, pre, step, loadedStatus: null, controller: null };
    el.addEventListener('toggle', () => { if (el.open && entry.loadedStatus === null) load(entry, signal); });
    logs.set(key, entry);
    if (open) load(entry, signal);
  }
  const finishedSinceLoad = entry.loadedStatus !== null && !TERMINAL.has(entry.loadedStatus) && TERMINAL.has(step.status);
  const linkArrived = !entry.step.logs_url && step.logs_url && entry.loadedStatus !== null && !entry.streaming;
  entry.step = step;
  if (entry.el.open && (finishedSinceLoad || linkArrived) && !entry.streaming) load(entry, signal);
  return entry.el;
}

function show(pre, text) {
  pre.textContent = text.length > MAX_CHARS ? `… (first ${text.length - MAX_CHARS} characters not shown)\n${text.slice(-MAX_CHARS)}` : text;
  pre.scrollTop = pre.scrollHeight;
}

async function load(entry, signal) {
  const { step, pre } = entry;
  entry.loadedStatus = step.status;
  entry.controller?.abort();
  entry.controller = new AbortController();
  const both = AbortSignal.any ? AbortSignal.any([signal, entry.controller.signal]) : signal;
  pre.dataset.state = 'loading';
  pre.textContent = 'Loading…';
  try {
    if (await fromApi(entry, both)) return;
    await fromLogStore(entry, both);
  } catch (err) {
    if (err.name === 'AbortError') return;
    pre.textContent = `The log could not be read: ${err.message}`;
  } finally {
    if (!both.aborted) pre.dataset.state = 'loaded';
  }
}

// true when the API served the log; false when it has no logs endpoint (the fallback applies).
// A followed log's body ends when the step has ended, and also when the gateway ends the stream
// because the token expired: the two look alike, so it is asked again from the bytes already
// shown (Range) until an answer that began with the step finished (X-Step-Status) brings nothing
// more. authFetch() renews an issuer login's token on the way, or ends the session (401).
async function fromApi(entry, signal) {
  const { step, pre } = entry;
  const follow = !TERMINAL.has(step.status);
  const url = `/v1/steps/${encodeURIComponent(step.id)}/logs${follow ? '?follow=true' : ''}`;
  const decoder = new TextDecoder();
  let text = '';
  let offset = 0;
  let failures = 0;
  entry.streaming = true;
  try {
    for (;;) {
      const opened = Date.now();
      const resp = await authFetch(url, {
        headers: { Accept: 'text/plain', ...(offset ? { Range: `bytes=${offset}-` } : {}) },
        signal,
        cache: 'no-store',
      });
      if (!offset && (resp.status === 404 || resp.status === 405)) return false;
      if (offset && resp.status === 416) break; // nothing past what is shown
      if (!resp.ok) throw await errorFrom(resp);
      if (!(resp.headers.get('content-type') || '').startsWith('text/plain')) {
        if (!offset) return false;
        throw new Error(`the log answered ${resp.headers.get('content-type') || 'no content type'}`);
      }
      const status = resp.headers.get('x-step-status');
      let received = 0;
      const reader = resp.body.getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        received += value.byteLength;
        offset += value.byteLength;
        text += decoder.decode(value, { stream: true });
        show(pre, text);
      }
      if (!follow) break;
      if (TERMINAL.has(status) && !received) {
        entry.loadedStatus = status; // the whole log is shown: no reload when the tree says so
        break;
      }
      if (received) failures = 0;
      else if (Date.now() - opened < QUICK_END_MS) {
        failures += 1;
        if (failures >= MAX_QUICK_ENDS) throw new Error('the log keeps ending before the step does');
        await pause(500 * failures, signal);
      }
    }
  } finally {
    entry.streaming = false;
  }
  text += decoder.decode();
  if (!text) pre.textContent = '(empty log)';
  else show(pre, text);
  return true;
}

async function fromLogStore(entry, signal) {
  const { step, pre } = entry;
  if (!step.logs_url) {
    if (TERMINAL.has(step.status)) pre.textContent = 'No log was stored for this step (it printed nothing, or it never ran).';
    else if (step.status === 'running') pre.textContent = 'No log yet: it appears once the worker has uploaded it.';
    else pre.textContent = 'The step has not started.';
    return;
  }
  let resp;
  try {
    resp = await fetch(step.logs_url, { signal, cache: 'no-store', credentials: 'omit' });
  } catch (err) {
    if (err.name === 'AbortError') throw err;
    // A log store that does not allow this page's origin (CORS) or a host the browser cannot reach.
    pre.replaceChildren(
      'The log store cannot be read from this page. ',
      h('a', { href: step.logs_url, target: '_blank', rel: 'noopener noreferrer' }, 'Open the log directly'),
    );
    return;
  }
  if (!resp.ok) {
    pre.textContent = `The log store answered HTTP ${resp.status} (the link may have expired: reload the page).`;
    return;
  }
  const text = await resp.text();
  show(pre, text || '(empty log)');
}
