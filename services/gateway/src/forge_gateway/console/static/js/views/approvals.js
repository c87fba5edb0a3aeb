// Approvals: approve a release for an environment with a justification, see its expiry, revoke.
// The approval service refuses self-approval; the page says so before anyone tries.
import { api, repoPath } from '../api.js';
import { hasRole, identity, roles } from '../auth.js';
import { append, badge, copyable, errorBox, field, fmtRelative, h, select, time } from '../dom.js';
import { releaseByRef, remember, rememberedRepository } from './common.js';

const RECENT = 10;

export async function approvalsView({ main, config, query, signal, navigate }) {
  const environments = config?.environments || ['dev', 'staging', 'production'];
  const repository = rememberedRepository(query);
  const project = query.get('project') || '';
  const ref = query.get('release') || '';
  const environment = environments.includes(query.get('environment')) ? query.get('environment') : 'production';
  main.append(h('h1', {}, 'Approvals'), pickForm({ repository, project, ref, environment, environments }, navigate));
  if (!repository || !project) {
    main.append(h('p', { class: 'muted' }, 'Choose a repository, a project and a release.'));
    return;
  }
  if (!ref) {
    main.append(await recentReleases(repository, project, environment, signal));
    return;
  }
  const release = await releaseByRef(repository, project, ref, signal);
  const box = h('section', { id: 'approval', dataset: { release: release.id } });
  main.append(box);
  await drawApproval(box, release, environment, signal);
}

// Why the current user may not approve this release, or null when they may.
export function notApprovableReason(release) {
  const me = identity().toLowerCase();
  if (!hasRole('approver', 'admin')) return `Your roles (${roles().join(', ') || 'none'}) cannot approve: the approver or admin role is needed.`;
  if (me && (release.created_by || '').toLowerCase() === me) return 'You created this release: another approver must approve it.';
  if (me && (release.trigger?.triggered_by || '').toLowerCase() === me) return 'You triggered the run that made this release: another approver must approve it.';
  return null;
}

function pickForm({ repository, project, ref, environment, environments }, navigate) {
  const repo = h('input', { name: 'repository', value: repository, placeholder: 'owner/name', required: true, autocomplete: 'off' });
  const proj = h('input', { name: 'project', value: project, required: true, autocomplete: 'off' });
  const rel = h('input', { name: 'release', value: ref, autocomplete: 'off', placeholder: 'number, alias or commit' });
  const env = select('environment', environments.map((e) => [e, e]), environment);
  return h('form', {
    class: 'filters',
    'aria-label': 'Choose a release',
    onsubmit: (event) => {
      event.preventDefault();
      remember(repo.value.trim());
      const q = new URLSearchParams({ repository: repo.value.trim(), project: proj.value.trim(), environment: env.value });
      if (rel.value.trim()) q.set('release', rel.value.trim());
      navigate(`/approvals?${q}`);
    },
  }, field('Repository', repo), field('Project', proj), field('Release', rel), field('Environment', env), h('button', { type: 'submit' }, 'Show'));
}

async function recentReleases(repository, project, environment, signal) {
  const list = await api(`/releases/${repoPath(repository)}/${encodeURIComponent(project)}`, { params: { limit: RECENT }, signal });
  const details = await Promise.all(list.releases.map((r) => releaseByRef(repository, project, r.id, signal).catch(() => null)));
  const link = (r) => `/approvals?${new URLSearchParams({ repository, project, release: String(r.release_number), environment })}`;
  return h('section', { id: 'recent' },
    h('h2', {}, `Recent releases of ${project}`),
    h('table', { class: 'list' },
      h('thead', {}, h('tr', {}, ['Release', 'Created by', 'Triggered by', `Approve for ${environment}`].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, details.filter(Boolean).map((r) => {
        const reason = notApprovableReason(r);
        return h('tr', {},
          h('td', {}, h('a', { href: link(r) }, `#${r.release_number}`)),
          h('td', {}, r.created_by), h('td', {}, r.trigger?.triggered_by || '—'),
          h('td', {}, reason ? h('span', { class: 'muted' }, `not approvable: ${reason}`) : h('a', { href: link(r) }, 'Approve…')));
      }))));
}

async function drawApproval(box, release, environment, signal) {
  let approval = null;
  let readError = null;
  try {
    approval = await api(`/approvals/${encodeURIComponent(release.id)}/${encodeURIComponent(environment)}`, { signal });
  } catch (err) {
    if (err.status !== 404) readError = err;
  }
  const reason = notApprovableReason(release);
  const redraw = () => { box.replaceChildren(); drawApproval(box, release, environment, signal); };
  box.replaceChildren();
  append(box, [
    h('h2', {}, `Release #${release.release_number} of ${release.repository} · ${release.project} for ${environment}`),
    h('dl', { class: 'facts' },
      h('dt', {}, 'Commit'), h('dd', {}, h('code', {}, release.commit_sha)),
      h('dt', {}, 'Created by'), h('dd', {}, release.created_by),
      h('dt', {}, 'Triggered by'), h('dd', {}, release.trigger?.triggered_by || '—'),
      h('dt', {}, 'Run'), h('dd', {}, release.pipeline_run_id ? h('a', { href: `/runs/${release.pipeline_run_id}` }, release.pipeline_run_id) : '—')),
    readError ? errorBox(readError, 'Reading the approval') : approvalCard(approval, redraw),
    approval?.status === 'active' ? null : approveForm(release, environment, reason, redraw)]);
}

function approvalCard(approval, redraw) {
  if (!approval) return h('p', { class: 'muted', id: 'approval-status' }, 'No approval yet.');
  const card = h('div', { class: 'card', id: 'approval-status', dataset: { status: approval.status } },
    h('h3', {}, 'Approval ', badge(approval.status)),
    h('dl', { class: 'facts' },
      h('dt', {}, 'Id'), h('dd', {}, copyable(approval.approval_id, 'approval id')),
      h('dt', {}, 'Approver'), h('dd', {}, approval.approver),
      h('dt', {}, 'Approved'), h('dd', {}, time(approval.approved_at)),
      h('dt', {}, approval.status === 'expired' ? 'Expired' : 'Expires'), h('dd', {}, time(approval.expires_at), ` (${fmtRelative(approval.expires_at)})`),
      h('dt', {}, 'Justification'), h('dd', {}, approval.justification || '—'),
      approval.revoked_by ? [h('dt', {}, 'Revoked'), h('dd', {}, time(approval.revoked_at), ` by ${approval.revoked_by}: ${approval.revocation_reason || 'no reason given'}`)] : null));
  if (approval.status === 'active' && hasRole('approver', 'admin')) {
    const reason = h('input', { name: 'reason', autocomplete: 'off' });
    const status = h('div', { 'aria-live': 'polite' });
    card.append(h('form', {
      id: 'revoke-form',
      onsubmit: async (event) => {
        event.preventDefault();
        try {
          await api(`/approvals/${encodeURIComponent(approval.approval_id)}`, { method: 'DELETE', body: reason.value.trim() ? { reason: reason.value.trim() } : undefined });
          redraw();
        } catch (err) {
          status.replaceChildren(errorBox(err, 'Revoking'));
        }
      },
    }, field('Reason for revoking', reason), h('button', { type: 'submit', class: 'danger' }, 'Revoke')), status);
  }
  return card;
}

function approveForm(release, environment, reason, redraw) {
  if (reason) return h('p', { class: 'warning', id: 'not-approvable' }, reason);
  const justification = h('textarea', { name: 'justification', rows: 3, required: true, maxlength: 4000 });
  const status = h('div', { 'aria-live': 'polite' });
  return h('section', { class: 'card' },
    h('h3', {}, `Approve for ${environment}`),
    h('form', {
      id: 'approve-form',
      onsubmit: async (event) => {
        event.preventDefault();
        try {
          await api('/approvals', { method: 'POST', body: { release_id: release.id, environment, justification: justification.value.trim() } });
          redraw();
        } catch (err) {
          status.replaceChildren(errorBox(err, 'Approving'));
        }
      },
    }, field('Justification', justification, 'Why this release may go out (change ticket, sign-off).'), h('button', { type: 'submit' }, 'Approve')),
    status);
}
