// A run's page: its phase -> task -> step tree, updated live from GET /v1/runs/{id}/events
// (SSE read with fetch), or by polling GET /v1/runs/{id} where that endpoint does not exist.
import { api } from '../api.js';
import { hasRole } from '../auth.js';
import { badge, errorBox, fmtDuration, h, shortId, time } from '../dom.js';
import { LiveRun } from './live.js';
import { logPanel } from './logs.js';

const RUN_TERMINAL = new Set(['success', 'failed', 'cancelled']);

export async function runView({ main, params, signal }) {
  const runId = decodeURIComponent(params[0]);
  let run = await api(`/runs/${encodeURIComponent(runId)}`, { signal });
  const header = h('div', { id: 'run-header' });
  const failure = h('div', { id: 'run-failure' });
  const note = h('p', { id: 'live-note', class: 'muted', 'aria-live': 'polite' });
  const tree = h('div', { id: 'run-tree' });
  const logs = new Map(); // step id -> open log panel, kept across re-renders
  main.append(header, note, failure, tree);

  let drawn = '';
  const draw = () => {
    // Live updates must not take the keyboard focus away: redraw only on change, then give the
    // focus back (log panels are kept across redraws; other controls are found by id).
    const state = JSON.stringify(run);
    if (state === drawn) return;
    drawn = state;
    const focused = document.activeElement;
    header.replaceChildren(...runHeader(run, () => cancel(run, header)));
    failure.replaceChildren(...failureBox(run, logs, signal));
    tree.replaceChildren(...phaseTree(run, logs, signal));
    main.dataset.runStatus = run.status;
    if (focused && focused !== document.body && !focused.isConnected) {
      (focused.id ? document.getElementById(focused.id) : null)?.focus();
    } else if (focused?.isConnected && document.activeElement !== focused) {
      focused.focus();
    }
  };
  draw();
  if (RUN_TERMINAL.has(run.status)) return;

  const live = new LiveRun(runId, {
    signal,
    onRun: (fresh) => { run = fresh; draw(); },
    onPatch: (kind, data) => { if (applyPatch(run, kind, data)) draw(); },
    onMode: (mode) => { note.textContent = mode === 'polling' ? 'Live updates unavailable, polling every 2 s.' : mode === 'live' ? 'Live.' : ''; },
    isDone: () => RUN_TERMINAL.has(run.status),
  });
  await live.follow();
}

function runHeader(run, onCancel) {
  const canCancel = !RUN_TERMINAL.has(run.status) && hasRole('developer', 'admin');
  return [
    h('h1', {}, 'Run ', h('code', {}, shortId(run.id)), ' ', badge(run.status)),
    h('dl', { class: 'facts' },
      h('dt', {}, 'Repository'), h('dd', {}, h('a', { href: `/runs?repository=${encodeURIComponent(run.repository)}` }, run.repository)),
      h('dt', {}, 'Branch'), h('dd', {}, run.branch),
      h('dt', {}, 'Commit'), h('dd', {}, h('code', {}, run.commit_sha)),
      h('dt', {}, 'Triggered by'), h('dd', {}, `${run.triggered_by} (${run.trigger_type})`),
      h('dt', {}, 'Started'), h('dd', {}, time(run.started_at)),
      h('dt', {}, 'Completed'), h('dd', {}, time(run.completed_at)),
      h('dt', {}, 'Duration'), h('dd', { id: 'run-duration' }, fmtDuration(run.started_at, run.completed_at) || '—')),
    h('div', { class: 'actions' },
      canCancel ? h('button', { type: 'button', class: 'danger', id: 'cancel-run', onclick: onCancel }, 'Cancel run') : null,
      run.status === 'success' ? h('a', { href: `/releases?repository=${encodeURIComponent(run.repository)}` }, 'Releases of this repository') : null),
  ];
}

async function cancel(run, header) {
  if (!window.confirm(`Cancel run ${shortId(run.id)}?`)) return;
  try {
    await api(`/runs/${encodeURIComponent(run.id)}`, { method: 'DELETE' });
  } catch (err) {
    header.append(errorBox(err, 'Cancelling the run'));
  }
}

function* steps(run) {
  for (const phase of run.phases || []) {
    for (const task of phase.tasks || []) for (const step of task.steps || []) yield { phase, task, step };
  }
}

// The failing step and its error first: what someone opening a red run wants to see.
function failureBox(run, logs, signal) {
  if (run.status !== 'failed' && !run.error) return [];
  const failed = [...steps(run)].filter(({ step }) => step.status === 'failed');
  return [h('section', { class: 'failure', 'aria-labelledby': 'failure-title' },
    h('h2', { id: 'failure-title' }, 'Why it failed'),
    run.error ? h('p', { class: 'error-text' }, run.error) : null,
    run.failed_phase ? h('p', {}, 'Failed phase: ', h('strong', {}, run.failed_phase)) : null,
    failed.map(({ phase, task, step }) => h('div', { class: 'failed-step' },
      h('p', {}, h('strong', {}, `${phase.name} › ${task.project_name} › ${step.name}`),
        ` exited with code ${step.exit_code ?? '?'}`),
      logPanel(step, { logs, signal, open: true, key: `failure-${step.id}` }))))];
}

function phaseTree(run, logs, signal) {
  if (!run.phases?.length) {
    return [h('p', { class: 'muted' }, RUN_TERMINAL.has(run.status) ? 'This run has no phases.' : 'Waiting for the pipeline to be discovered…')];
  }
  return run.phases.map((phase) => h('section', { class: 'phase', dataset: { id: phase.id, status: phase.status } },
    h('h2', {}, `${phase.name} `, badge(phase.status), h('span', { class: 'muted duration' }, ` ${fmtDuration(phase.started_at, phase.completed_at)}`),
      h('span', { class: 'muted' }, ` · group ${phase.group_number}`)),
    phase.tasks.map((task) => h('div', { class: 'task', dataset: { id: task.id, status: task.status } },
      h('h3', {}, `${task.project_name} `, badge(task.status),
        task.started_at ? h('span', { class: 'muted duration' }, ` ${fmtDuration(task.started_at, task.completed_at)}`) : null),
      h('ol', { class: 'steps' }, task.steps.map((step) => h('li', { class: 'step', dataset: { id: step.id, status: step.status } },
        h('div', { class: 'step-row' },
          h('span', { class: 'step-name' }, step.name), badge(step.status),
          step.exit_code !== null && step.exit_code !== undefined ? h('span', { class: 'muted' }, `exit ${step.exit_code}`) : null,
          step.started_at ? h('span', { class: 'muted duration' }, fmtDuration(step.started_at, step.completed_at)) : null),
        logPanel(step, { logs, signal, key: step.id }))))))));
}

// Applies one SSE event to the tree in memory; false when nothing visible changed.
export function applyPatch(run, kind, data) {
  if (!data || !data.id) return false;
  const fields = ['status', 'started_at', 'completed_at', 'exit_code', 'error'];
  const update = (target) => {
    let changed = false;
    for (const key of fields) {
      if (key in data && target[key] !== data[key]) {
        target[key] = data[key];
        changed = true;
      }
    }
    return changed;
  };
  if (kind === 'run') return data.id === run.id ? update(run) : false;
  for (const phase of run.phases || []) {
    if (kind === 'phase' && phase.id === data.id) return update(phase);
    for (const task of phase.tasks || []) {
      if (kind === 'task' && task.id === data.id) return update(task);
      for (const step of task.steps || []) if (kind === 'step' && step.id === data.id) return update(step);
    }
  }
  return false;
}
