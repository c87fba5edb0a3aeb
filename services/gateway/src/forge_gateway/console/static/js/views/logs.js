// A step's log: GET /v1/steps/{id}/logs (following while the step runs) where the API has it,
// else the step's presigned logs_url read directly from the log store.
import { authFetch, errorFrom } from '../api.js';
import { h, TERMINAL } from '../dom.js';

const MAX_CHARS = 1 << 20;

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
async function fromApi(entry, signal) {
  const { step, pre } = entry;
  const follow = !TERMINAL.has(step.status);
  const resp = await authFetch(`/v1/steps/${encodeURIComponent(step.id)}/logs${follow ? '?follow=true' : ''}`, {
    headers: { Accept: 'text/plain' },
    signal,
    cache: 'no-store',
  });
  if (resp.status === 404 || resp.status === 405) return false;
  if (!resp.ok) throw await errorFrom(resp);
  if (!(resp.headers.get('content-type') || '').startsWith('text/plain')) return false;
  let text = '';
  entry.streaming = true;
  try {
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += value;
      show(pre, text);
    }
  } finally {
    entry.streaming = false;
  }
  if (!text) pre.textContent = '(empty log)';
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
