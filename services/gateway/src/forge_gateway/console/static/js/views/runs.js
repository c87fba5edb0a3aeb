import { api } from '../api.js';
import { hasRole } from '../auth.js';
import { badge, errorBox, field, h, pause, select, shortId, TERMINAL, time } from '../dom.js';
import { remember, rememberedRepository } from './common.js';

const STATUSES = ['', 'pending', 'running', 'success', 'failed', 'cancelled'];
const PAGE = 20;

export async function runsView({ main, query, signal, navigate }) {
  const repository = rememberedRepository(query);
  const filters = {
    repository,
    status: query.get('status') || '',
    branch: query.get('branch') || '',
    triggered_by: query.get('triggered_by') || '',
  };
  main.append(h('h1', {}, 'Runs'), filterForm(filters, navigate), startForm(repository, navigate));
  const results = h('section', { 'aria-labelledby': 'runs-title', id: 'runs' });
  main.append(results);
  if (!repository) {
    results.append(h('p', { class: 'muted', id: 'runs-title' }, 'Choose a repository (owner/name) to list its runs.'));
    return;
  }
  const page = {
    offset: Math.max(0, Number.parseInt(query.get('offset') || '0', 10) || 0),
    cursor: query.get('cursor') || '',
  };
  // Live status: the list is refreshed while it shows runs that have not finished.
  let shown = '';
  for (let first = true; !signal.aborted; first = false) {
    let list;
    try {
      list = await api('/runs', {
        params: { ...filters, limit: PAGE, ...(page.cursor ? { cursor: page.cursor } : { offset: page.offset }) },
        signal,
      });
    } catch (err) {
      if (signal.aborted) return;
      results.replaceChildren(errorBox(err, 'Listing runs'));
      shown = '';
      if (!first) await pause(5000, signal);
      if (first) return;
      continue;
    }
    // Redrawn only when something changed, so a refresh does not move the keyboard focus.
    const state = JSON.stringify(list);
    if (state !== shown) {
      shown = state;
      results.replaceChildren(...runTable(list, filters, page));
    }
    const active = list.runs.some((r) => !TERMINAL.has(r.status));
    await pause(active ? 2000 : 10000, signal);
  }
}

function filterForm(filters, navigate) {
  const inputs = {
    repository: h('input', { name: 'repository', value: filters.repository, placeholder: 'owner/name', required: true, autocomplete: 'off' }),
    status: select('status', STATUSES.map((s) => [s, s || 'any']), filters.status),
    branch: h('input', { name: 'branch', value: filters.branch, autocomplete: 'off' }),
    triggered_by: h('input', { name: 'triggered_by', value: filters.triggered_by, placeholder: 'alice@example.com', autocomplete: 'off' }),
  };
  return h('form', {
    class: 'filters',
    role: 'search',
    'aria-label': 'Filter runs',
    onsubmit: (event) => {
      event.preventDefault();
      const q = new URLSearchParams();
      for (const [key, input] of Object.entries(inputs)) if (input.value.trim()) q.set(key, input.value.trim());
      remember(inputs.repository.value.trim());
      navigate(`/runs?${q}`);
    },
  },
  field('Repository', inputs.repository),
  field('Status', inputs.status),
  field('Branch', inputs.branch),
  field('Author', inputs.triggered_by),
  h('button', { type: 'submit' }, 'Show runs'));
}

function startForm(repository, navigate) {
  const repo = h('input', { name: 'repository', value: repository, placeholder: 'owner/name', required: true, autocomplete: 'off' });
  const branch = h('input', { name: 'branch', value: 'main', required: true, autocomplete: 'off' });
  const commit = h('input', { name: 'commit_sha', required: true, pattern: '[0-9a-fA-F]{7,40}', placeholder: '40 hex digits', autocomplete: 'off', size: 42 });
  const status = h('div', { 'aria-live': 'polite' });
  const form = h('form', {
    id: 'start-run',
    onsubmit: async (event) => {
      event.preventDefault();
      status.replaceChildren();
      try {
        const run = await api('/runs', {
          method: 'POST',
          body: { repository: repo.value.trim(), branch: branch.value.trim(), commit_sha: commit.value.trim(), trigger_type: 'manual' },
        });
        remember(repo.value.trim());
        navigate(`/runs/${run.id}`);
      } catch (err) {
        status.replaceChildren(errorBox(err, 'Starting the run'));
      }
    },
  },
  field('Repository', repo), field('Branch', branch), field('Commit', commit),
  h('button', { type: 'submit', disabled: !hasRole('developer', 'admin') }, 'Run'));
  return h('details', { class: 'card', open: !repository },
    h('summary', {}, 'Start a run'),
    hasRole('developer', 'admin') ? null : h('p', { class: 'muted' }, 'Starting runs needs the developer or admin role.'),
    form, status);
}

function runTable(list, filters, page) {
  const out = [h('h2', { id: 'runs-title' }, `${list.total ?? list.runs.length} runs in ${filters.repository}`)];
  // The server ignores filters it does not know yet (author before the list filters land).
  if (filters.triggered_by && list.runs.length && !('triggered_by' in list.runs[0])) {
    out.push(h('p', { class: 'warning' }, 'This server does not filter runs by author yet: the list below is not filtered by author.'));
  }
  if (!list.runs.length) {
    out.push(h('p', { class: 'muted' }, 'No runs match.'));
    return out;
  }
  const hasBranch = 'branch' in list.runs[0];
  const hasAuthor = 'triggered_by' in list.runs[0];
  out.push(h('table', { class: 'list' },
    h('thead', {}, h('tr', {},
      h('th', { scope: 'col' }, 'Run'), h('th', { scope: 'col' }, 'Status'), h('th', { scope: 'col' }, 'Commit'),
      hasBranch ? h('th', { scope: 'col' }, 'Branch') : null, hasAuthor ? h('th', { scope: 'col' }, 'Author') : null,
      h('th', { scope: 'col' }, 'Started'))),
    h('tbody', {}, list.runs.map((run) => h('tr', { dataset: { run: run.id } },
      h('td', {}, h('a', { href: `/runs/${run.id}` }, shortId(run.id))),
      h('td', {}, badge(run.status)),
      h('td', {}, h('code', {}, (run.commit_sha || '').slice(0, 12))),
      hasBranch ? h('td', {}, run.branch) : null,
      hasAuthor ? h('td', {}, run.triggered_by) : null,
      h('td', {}, time(run.started_at)))))));
  out.push(pager(list, filters, page));
  return out;
}

function pager(list, filters, page) {
  const base = new URLSearchParams(Object.entries(filters).filter(([, v]) => v));
  const links = [];
  if (page.offset > 0 && !page.cursor) {
    const q = new URLSearchParams(base);
    q.set('offset', String(Math.max(0, page.offset - PAGE)));
    links.push(h('a', { href: `/runs?${q}`, rel: 'prev' }, '← Newer'));
  }
  if (list.next_cursor) {
    const q = new URLSearchParams(base);
    q.set('cursor', list.next_cursor);
    links.push(h('a', { href: `/runs?${q}`, rel: 'next' }, 'Older →'));
  } else if (list.next_cursor === undefined && page.offset + list.runs.length < (list.total ?? 0)) {
    const q = new URLSearchParams(base);
    q.set('offset', String(page.offset + PAGE));
    links.push(h('a', { href: `/runs?${q}`, rel: 'next' }, 'Older →'));
  }
  return h('nav', { class: 'pager', 'aria-label': 'Pages' }, links);
}
