import { api, repoPath } from '../api.js';
import { badge, copyable, errorBox, field, h, shortId, time } from '../dom.js';
import { projectsOf, releaseByRef, remember, rememberedRepository } from './common.js';

const PAGE = 20;

export async function releasesView({ main, query, signal, navigate }) {
  const repository = rememberedRepository(query);
  const project = query.get('project') || '';
  const ref = query.get('release') || '';
  main.append(h('h1', {}, 'Releases'), pickForm(repository, project, navigate));
  if (!repository) {
    main.append(h('p', { class: 'muted' }, 'Choose a repository and a project.'));
    return;
  }
  if (!project) {
    const projects = await projectsOf(repository, signal);
    main.append(projects.length
      ? h('section', {}, h('h2', {}, `Projects of ${repository}`), h('ul', {}, projects.map((p) => h('li', {},
        h('a', { href: `/releases?${new URLSearchParams({ repository, project: p })}` }, p)))))
      : h('p', { class: 'muted' }, 'No run of this repository names a project yet: type the project name.'));
    return;
  }
  if (ref) {
    main.append(await releaseDetail(await releaseByRef(repository, project, ref, signal), signal));
    return;
  }
  const offset = Math.max(0, Number.parseInt(query.get('offset') || '0', 10) || 0);
  const list = await api(`/releases/${repoPath(repository)}/${encodeURIComponent(project)}`, { params: { limit: PAGE, offset }, signal });
  main.append(releaseList(repository, project, list, offset));
}

function pickForm(repository, project, navigate) {
  const repo = h('input', { name: 'repository', value: repository, placeholder: 'owner/name', required: true, autocomplete: 'off' });
  const proj = h('input', { name: 'project', value: project, autocomplete: 'off' });
  return h('form', {
    class: 'filters',
    'aria-label': 'Choose a project',
    onsubmit: (event) => {
      event.preventDefault();
      remember(repo.value.trim());
      const q = new URLSearchParams({ repository: repo.value.trim() });
      if (proj.value.trim()) q.set('project', proj.value.trim());
      navigate(`/releases?${q}`);
    },
  }, field('Repository', repo), field('Project', proj), h('button', { type: 'submit' }, 'Show releases'));
}

function releaseList(repository, project, list, offset) {
  const link = (number) => `/releases?${new URLSearchParams({ repository, project, release: String(number) })}`;
  const base = new URLSearchParams({ repository, project });
  const pages = [];
  if (offset > 0) pages.push(h('a', { href: `/releases?${base}&offset=${Math.max(0, offset - PAGE)}`, rel: 'prev' }, '← Newer'));
  if (offset + list.releases.length < list.total) pages.push(h('a', { href: `/releases?${base}&offset=${offset + PAGE}`, rel: 'next' }, 'Older →'));
  return h('section', { id: 'releases' },
    h('h2', {}, `${list.total} releases of ${repository} · ${project}`),
    list.releases.length
      ? h('table', { class: 'list' },
        h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Release'), h('th', { scope: 'col' }, 'Commit'), h('th', { scope: 'col' }, 'Created'))),
        h('tbody', {}, list.releases.map((r) => h('tr', { dataset: { release: r.id } },
          h('td', {}, h('a', { href: link(r.release_number) }, `#${r.release_number}`)),
          h('td', {}, h('code', {}, r.commit_sha.slice(0, 12))),
          h('td', {}, time(r.created_at))))))
      : h('p', { class: 'muted' }, 'No releases yet.'),
    h('nav', { class: 'pager', 'aria-label': 'Pages' }, pages));
}

export async function releaseDetail(release, signal) {
  const repoProject = new URLSearchParams({ repository: release.repository, project: release.project });
  const approvals = new URLSearchParams({ ...Object.fromEntries(repoProject), release: String(release.release_number), environment: 'production' });
  const section = h('section', { id: 'release', dataset: { id: release.id } },
    h('h2', {}, `${release.repository} · ${release.project} · release #${release.release_number}`),
    h('dl', { class: 'facts' },
      h('dt', {}, 'Id'), h('dd', {}, copyable(release.id, 'release id')),
      h('dt', {}, 'Commit'), h('dd', {}, copyable(release.commit_sha, 'commit')),
      h('dt', {}, 'OCI reference'), h('dd', {}, copyable(release.oci_uri, 'OCI reference')),
      h('dt', {}, 'OCI digest'), h('dd', {}, copyable(release.oci_digest, 'OCI digest')),
      h('dt', {}, 'Created'), h('dd', {}, time(release.created_at), ` by ${release.created_by}`),
      h('dt', {}, 'Trigger'), h('dd', {}, [release.trigger?.trigger_type, release.trigger?.branch || release.trigger?.tag, release.trigger?.triggered_by && `by ${release.trigger.triggered_by}`].filter(Boolean).join(' · ') || '—'),
      h('dt', {}, 'Run'), h('dd', {}, release.pipeline_run_id ? h('a', { href: `/runs/${release.pipeline_run_id}` }, `run ${shortId(release.pipeline_run_id)}`) : 'made by hand (no run)')),
    h('h3', {}, 'Aliases'),
    h('ul', { class: 'chips' }, (release.aliases || []).map((a) => h('li', { class: 'chip', title: a.alias_type }, `${a.alias}`, h('span', { class: 'muted' }, ` ${a.alias_type}`)))),
    h('h3', {}, 'Artifacts'),
    (release.artifacts || []).length
      ? h('table', { class: 'list' },
        h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Name'), h('th', { scope: 'col' }, 'Type'), h('th', { scope: 'col' }, 'Tracking reference'), h('th', { scope: 'col' }, 'Published at'))),
        h('tbody', {}, release.artifacts.map((a) => h('tr', {},
          h('td', {}, a.name), h('td', {}, a.type),
          h('td', {}, copyable(a.tracking_oci_uri, `${a.name} tracking reference`)),
          h('td', {}, copyable(a.primary_published_uri, `${a.name} published reference`))))))
      : h('p', { class: 'muted' }, 'No artifacts.'),
    h('div', { class: 'actions' },
      h('a', { class: 'button', href: `/environments?${repoProject}&release=${release.release_number}` }, 'Deploy…'),
      h('a', { class: 'button', href: `/approvals?${approvals}` }, 'Approvals')));
  const deployed = h('div', { id: 'release-environments' });
  section.append(deployed);
  whereDeployed(release, deployed, signal);
  return section;
}

async function whereDeployed(release, box, signal) {
  const cells = await Promise.all(['dev', 'staging', 'production'].map(async (env) => {
    try {
      const current = await api(`/deployments/${env}/${repoPath(release.repository)}/${encodeURIComponent(release.project)}`, { signal });
      return current.release_id === release.id ? h('li', {}, `${env}: `, badge(current.status)) : null;
    } catch (err) {
      return err.status === 404 ? null : h('li', {}, errorBox(err, `Reading ${env}`));
    }
  }));
  const found = cells.filter(Boolean);
  box.replaceChildren(h('h3', {}, 'Current in'), found.length ? h('ul', {}, found) : h('p', { class: 'muted' }, 'No environment runs this release.'));
}
