// Small DOM helpers: every text goes in through textContent, never innerHTML, so data from the
// API (log lines, commit messages, justifications) cannot inject markup.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (value === true) el.setAttribute(key, '');
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export const TERMINAL = new Set(['success', 'failed', 'cancelled', 'skipped']);

export function badge(status) {
  return h('span', { class: `badge s-${status || 'unknown'}`, dataset: { status: status || '' } }, status || 'unknown');
}

export function fmtTime(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'medium' });
}

export function time(iso) {
  return h('time', { datetime: iso || null, title: iso || null }, fmtTime(iso));
}

export function fmtDuration(start, end) {
  if (!start) return '';
  const from = new Date(start).getTime();
  const to = end ? new Date(end).getTime() : Date.now();
  if (Number.isNaN(from) || Number.isNaN(to)) return '';
  let s = Math.max(0, Math.round((to - from) / 1000));
  const hours = Math.floor(s / 3600);
  s -= hours * 3600;
  const minutes = Math.floor(s / 60);
  s -= minutes * 60;
  if (hours) return `${hours}h ${minutes}m`;
  if (minutes) return `${minutes}m ${s}s`;
  return `${s}s`;
}

export function fmtRelative(iso) {
  const ms = new Date(iso).getTime() - Date.now();
  if (Number.isNaN(ms)) return '';
  const abs = Math.abs(ms);
  const unit = abs >= 3600e3 ? [Math.round(abs / 3600e3), 'h'] : [Math.max(1, Math.round(abs / 60e3)), 'min'];
  return ms >= 0 ? `in ${unit[0]} ${unit[1]}` : `${unit[0]} ${unit[1]} ago`;
}

export function shortId(id) {
  return (id || '').slice(0, 8);
}

// A value with a "Copy" button (digests, OCI references, approval ids).
export function copyable(value, label) {
  const code = h('code', { class: 'copyable' }, value || '—');
  if (!value) return code;
  const button = h('button', {
    type: 'button',
    class: 'small',
    'aria-label': `Copy ${label || 'value'}`,
    onclick: async () => {
      try {
        await navigator.clipboard.writeText(value);
        button.textContent = 'Copied';
      } catch {
        // Clipboard access needs a secure context; selecting the text lets the user copy it.
        const range = document.createRange();
        range.selectNodeContents(code);
        const selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        button.textContent = 'Selected';
      }
      setTimeout(() => { button.textContent = 'Copy'; }, 1500);
    },
  }, 'Copy');
  return h('span', { class: 'copy-row' }, code, button);
}

// An API error as the user should see it: status, the envelope's code and message, details.
export function errorBox(err, what) {
  const box = h('div', { class: 'error', role: 'alert' });
  const title = what ? `${what} failed` : 'Request failed';
  if (err && err.name === 'ApiError') {
    append(box, [
      h('strong', {}, `${title}: ${err.message}`),
      h('div', { class: 'muted' }, `HTTP ${err.status}${err.code ? ` · ${err.code}` : ''}`),
      err.details && Object.keys(err.details).length
        ? h('pre', { class: 'details' }, JSON.stringify(err.details, null, 2))
        : null,
    ]);
  } else {
    append(box, [h('strong', {}, `${title}: ${(err && err.message) || String(err)}`)]);
  }
  return box;
}

export function field(label, input, hint) {
  const id = input.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  input.id = id;
  return h('div', { class: 'field' }, h('label', { for: id }, label), input, hint ? h('small', { class: 'muted' }, hint) : null);
}

export function select(name, options, value) {
  return h('select', { name }, options.map(([v, text]) => h('option', { value: v, selected: v === value }, text)));
}

// Resolves after ms, or at once when the signal aborts (a view that is left stops its loops).
export function pause(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}
