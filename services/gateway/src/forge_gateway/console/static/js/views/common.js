// Pieces several views share: the remembered repository, the project names of a repository.
import { api, repoPath } from '../api.js';

export function rememberedRepository(query) {
  const fromQuery = query?.get('repository');
  if (fromQuery) {
    sessionStorage.setItem('forge.repository', fromQuery);
    return fromQuery;
  }
  return sessionStorage.getItem('forge.repository') || '';
}

export function remember(repository) {
  if (repository) sessionStorage.setItem('forge.repository', repository);
}

// There is no "projects of a repository" endpoint: the newest run's tasks name them.
export async function projectsOf(repository, signal) {
  if (!repository) return [];
  const list = await api('/runs', { params: { repository, limit: 5 }, signal });
  for (const summary of list.runs) {
    const run = await api(`/runs/${encodeURIComponent(summary.id)}`, { signal });
    const names = new Set();
    for (const phase of run.phases || []) for (const task of phase.tasks || []) names.add(task.project_name);
    if (names.size) return [...names].sort();
  }
  return [];
}

export async function releaseByRef(repository, project, ref, signal) {
  return api(`/releases/${repoPath(repository)}/${encodeURIComponent(project)}/${encodeURIComponent(ref)}`, { signal });
}

export const NEXT_ENVIRONMENT = { dev: 'staging', staging: 'production' };
