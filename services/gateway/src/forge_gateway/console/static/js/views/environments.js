// The environments board: dev / staging / production x project, with deploy, promote, history
// and rollback. Production deployments need an approval id (the approval service's).
import { api, repoPath } from '../api.js';
import { hasRole } from '../auth.js';
import { badge, copyable, errorBox, field, h, pause, select, shortId, time } from '../dom.js';
import { NEXT_ENVIRONMENT, projectsOf, releaseByRef, remember, rememberedRepository } from './common.js';

export async function environmentsView({ main, config, query, signal, navigate }) {
  const environments = config?.environments || ['dev', 'staging', 'production'];
  const repository = rememberedRepository(query);
  const given = (query.get('projects') || query.get('project') || '').split(',').map((p) => p.trim()).filter(Boolean);
  main.append(h('h1', {}, 'Environments'), pickForm(repository, given, navigate));
  if (!repository) {
    main.append(h('p', { class: 'muted' }, 'Choose a repository.'));
    return;
  }
  const projects = given.length ? given : await projectsOf(repository, signal);
  if (!projects.length) {
    main.append(h('p', { class: 'muted' }, 'No run of this repository names a project yet: type the project names.'));
    return;
  }
  const board = h('section', { id: 'board', 'aria-labelledby': 'board-title' });
  const history = h('section', { id: 'history' });
  const deploy = new DeployForm({ repository, projects, environments, signal, onDeployed: (id) => refresh(id) });
  const refresh = async (pendingId) => {
    for (let i = 0; i < 30 && !signal.aborted; i += 1) {
      const cells = await loadBoard(repository, projects, environments, signal);
      board.replaceChildren(...drawBoard(repository, projects, environments, cells, { deploy, history, signal }));
      const waiting = pendingId && [...cells.values()].some((c) => c.current?.deployment_id === pendingId && c.current.status === 'pending');
      const landed = pendingId && [...cells.values()].some((c) => c.current?.deployment_id === pendingId);
      if (!pendingId || (landed && !waiting)) return;
      await pause(1000, signal);
    }
  };
  main.append(board, deploy.element, history);
  await refresh();
  if (query.get('release')) deploy.open({ project: projects[0], environment: 'dev', release: query.get('release') });
}

function pickForm(repository, projects, navigate) {
  const repo = h('input', { name: 'repository', value: repository, placeholder: 'owner/name', required: true, autocomplete: 'off' });
  const proj = h('input', { name: 'projects', value: projects.join(', '), autocomplete: 'off', placeholder: 'all projects of the newest run' });
  return h('form', {
    class: 'filters',
    'aria-label': 'Choose a repository',
    onsubmit: (event) => {
      event.preventDefault();
      remember(repo.value.trim());
      const q = new URLSearchParams({ repository: repo.value.trim() });
      if (proj.value.trim()) q.set('projects', proj.value.trim());
      navigate(`/environments?${q}`);
    },
  }, field('Repository', repo), field('Projects (comma-separated)', proj), h('button', { type: 'submit' }, 'Show board'));
}

async function loadBoard(repository, projects, environments, signal) {
  const cells = new Map();
  await Promise.all(projects.flatMap((project) => environments.map(async (env) => {
    const key = `${project}|${env}`;
    try {
      cells.set(key, { current: await api(`/deployments/${env}/${repoPath(repository)}/${encodeURIComponent(project)}`, { signal }) });
    } catch (err) {
      cells.set(key, err.status === 404 ? { current: null } : { error: err });
    }
  })));
  return cells;
}

function drawBoard(repository, projects, environments, cells, { deploy, history, signal }) {
  const canDeploy = hasRole('developer', 'admin');
  return [
    h('h2', { id: 'board-title' }, `What runs where · ${repository}`),
    h('table', { class: 'board' },
      h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Project'), environments.map((env) => h('th', { scope: 'col' }, env)))),
      h('tbody', {}, projects.map((project) => h('tr', {},
        h('th', { scope: 'row' }, project),
        environments.map((env) => {
          const cell = cells.get(`${project}|${env}`) || {};
          const current = cell.current;
          const next = NEXT_ENVIRONMENT[env];
          const releaseLink = current
            ? h('a', { href: `/releases?${new URLSearchParams({ repository, project, release: String(current.release_number) })}` }, `release #${current.release_number}`)
            : null;
          return h('td', { class: 'env-cell', dataset: { project, environment: env, release: current ? String(current.release_number) : '' } },
            cell.error ? errorBox(cell.error, 'Reading') : null,
            current
              ? h('div', {}, h('strong', {}, releaseLink), ' ', badge(current.status),
                h('div', { class: 'muted' }, time(current.deployed_at)), h('div', { class: 'muted' }, `by ${current.deployed_by}`))
              : cell.error ? null : h('p', { class: 'muted' }, 'nothing deployed'),
            h('div', { class: 'actions' },
              h('button', { type: 'button', class: 'small', onclick: () => showHistory(history, repository, project, env, deploy, signal) }, 'History'),
              canDeploy ? h('button', { type: 'button', class: 'small', onclick: () => deploy.open({ project, environment: env }) }, 'Deploy…') : null,
              canDeploy && current && next
                ? h('button', { type: 'button', class: 'small', onclick: () => deploy.open({ project, environment: next, release: String(current.release_number), promoteFrom: env }) }, `Promote to ${next}`)
                : null));
        }))))),
  ];
}

async function showHistory(box, repository, project, env, deploy, signal) {
  box.replaceChildren(h('h2', {}, `History · ${project} in ${env}`), h('p', { class: 'muted' }, 'Loading…'));
  let list;
  try {
    list = await api(`/deployments/${env}/${repoPath(repository)}/${encodeURIComponent(project)}/history`, { params: { limit: 20 }, signal });
  } catch (err) {
    box.replaceChildren(errorBox(err, 'Reading the history'));
    return;
  }
  const canDeploy = hasRole('developer', 'admin');
  box.replaceChildren(
    h('h2', { tabindex: '-1' }, `History · ${project} in ${env} (${list.total})`),
    list.deployments.length
      ? h('table', { class: 'list' },
        h('thead', {}, h('tr', {}, ['Deployment', 'Release', 'Status', 'Deployed', 'By', ''].map((t) => h('th', { scope: 'col' }, t)))),
        h('tbody', {}, list.deployments.map((d) => h('tr', {},
          h('td', {}, h('code', {}, shortId(d.id))), h('td', {}, `#${d.release_number}`), h('td', {}, badge(d.status)),
          h('td', {}, time(d.deployed_at)), h('td', {}, d.deployed_by),
          h('td', {}, canDeploy && d.status !== 'active' && d.status !== 'pending'
            ? h('button', { type: 'button', class: 'small', onclick: () => deploy.open({ project, environment: env, release: String(d.release_number), rollback: true }) }, `Roll back to #${d.release_number}`)
            : null)))))
      : h('p', { class: 'muted' }, 'Never deployed.'));
  box.querySelector('h2').focus();
}

class DeployForm {
  constructor({ repository, projects, environments, signal, onDeployed }) {
    this.repository = repository;
    this.signal = signal;
    this.onDeployed = onDeployed;
    this.project = select('project', projects.map((p) => [p, p]), projects[0]);
    this.environment = select('environment', environments.map((e) => [e, e]), environments[0]);
    this.release = h('input', { name: 'release', required: true, autocomplete: 'off', placeholder: 'number, alias or commit' });
    this.approval = h('input', { name: 'approval_id', autocomplete: 'off', placeholder: 'uuid', size: 38 });
    this.status = h('div', { 'aria-live': 'polite', id: 'deploy-status' });
    this.approvalBox = h('div', { class: 'approval-box' },
      field('Approval id', this.approval, 'Production needs an active approval of this release by someone else.'),
      h('button', { type: 'button', class: 'small', id: 'find-approval', onclick: () => this.findApproval() }, 'Find approval'),
      h('span', { id: 'request-approval' }));
    this.environment.addEventListener('change', () => this.sync());
    this.title = h('h2', { tabindex: '-1' }, 'Deploy');
    this.form = h('form', { id: 'deploy-form', onsubmit: (event) => { event.preventDefault(); this.submit(); } },
      field('Project', this.project), field('Environment', this.environment), field('Release', this.release),
      this.approvalBox, h('button', { type: 'submit' }, 'Deploy'));
    this.element = h('section', { class: 'card', id: 'deploy', hidden: true }, this.title, this.form, this.status);
  }

  open({ project, environment, release = '', promoteFrom, rollback }) {
    this.project.value = project;
    this.environment.value = environment;
    this.release.value = release;
    this.approval.value = '';
    this.status.replaceChildren();
    this.title.textContent = promoteFrom ? `Promote from ${promoteFrom} to ${environment}` : rollback ? `Roll back ${environment}` : 'Deploy';
    this.element.hidden = false;
    this.sync();
    if (environment === 'production' && release) this.findApproval();
    this.title.focus();
  }

  sync() {
    this.approvalBox.hidden = this.environment.value !== 'production';
    this.approval.required = this.environment.value === 'production';
  }

  async resolve() {
    return releaseByRef(this.repository, this.project.value, this.release.value.trim(), this.signal);
  }

  // An active approval of this release for production, if one exists; else a link to ask for one.
  async findApproval() {
    const ask = this.element.querySelector('#request-approval');
    ask.replaceChildren();
    if (!this.release.value.trim()) return;
    try {
      const release = await this.resolve();
      const approval = await api(`/approvals/${encodeURIComponent(release.id)}/production`, { signal: this.signal });
      if (approval.status === 'active') {
        this.approval.value = approval.approval_id;
        ask.replaceChildren(h('span', { class: 'muted' }, `approved by ${approval.approver}, expires ${new Date(approval.expires_at).toLocaleString()}`));
        return;
      }
      ask.append(h('span', { class: 'muted' }, `the latest approval is ${approval.status}. `));
    } catch (err) {
      if (err.status !== 404) {
        ask.replaceChildren(errorBox(err, 'Finding an approval'));
        return;
      }
    }
    const url = new URL('/approvals', location.origin);
    url.search = new URLSearchParams({ repository: this.repository, project: this.project.value, release: this.release.value.trim(), environment: 'production' }).toString();
    ask.append('No active approval. Ask an approver to open ', h('a', { href: url.pathname + url.search }, 'this approval page'), ': ', copyable(url.toString(), 'approval link'));
  }

  async submit() {
    this.status.replaceChildren(h('p', { class: 'muted' }, 'Deploying…'));
    try {
      const release = await this.resolve();
      const body = { release_id: release.id, environment: this.environment.value };
      if (this.environment.value === 'production') body.approval_id = this.approval.value.trim();
      const created = await api('/deployments', { method: 'POST', body, signal: this.signal });
      this.status.replaceChildren(h('p', { class: 'ok', role: 'status' },
        `Deployment ${shortId(created.id)} of release #${release.release_number} to ${body.environment}: ${created.status}. GitOps commit `,
        h('code', {}, (created.gitops_commit_sha || '').slice(0, 12))));
      await this.onDeployed(created.id);
    } catch (err) {
      if (err.name === 'AbortError') return;
      this.status.replaceChildren(errorBox(err, 'Deploying'));
    }
  }
}
