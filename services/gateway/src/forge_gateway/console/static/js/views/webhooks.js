// Webhooks: the outgoing webhook subscriptions the user may manage, and a subscription's recent
// deliveries with a button to send one again (docs/webhooks.md). Creating and changing
// subscriptions is the CLI's and the API's job: the secret is shown once, not in a browser.
import { api } from '../api.js';
import { append, badge, copyable, errorBox, field, h, shortId, time } from '../dom.js';
import { remember } from './common.js';

const PAGE = 50;

export async function webhooksView({ main, query, signal, navigate }) {
  const repository = query.get('repository') || '';
  main.append(h('h1', {}, 'Webhooks'), filterForm(repository, navigate));
  const list = await api('/webhook-subscriptions', { params: { repository: repository || undefined, limit: PAGE }, signal });
  if (!list.subscriptions.length) {
    main.append(h('p', { class: 'muted' }, 'No subscriptions. Create one with `forge webhooks create` (docs/webhooks.md).'));
    return;
  }
  main.append(h('table', { class: 'list', id: 'subscriptions' },
    h('thead', {}, h('tr', {}, ['Subscription', 'URL', 'Events', 'Repository', 'Environment', 'State'].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, list.subscriptions.map((s) => h('tr', { dataset: { id: s.id } },
      h('td', {}, h('a', { href: `/webhooks/${encodeURIComponent(s.id)}` }, shortId(s.id))),
      h('td', {}, h('code', {}, s.url)),
      h('td', {}, s.event_types.join(', ')),
      h('td', {}, s.repository || 'all'),
      h('td', {}, s.environment || 'all'),
      h('td', {}, stateOf(s)))))));
  if (list.next_cursor) main.append(h('p', { class: 'muted' }, `Showing the newest ${PAGE}; filter by repository to see others.`));
}

function stateOf(subscription) {
  if (subscription.active) return badge(subscription.failing_since ? 'failing' : 'active');
  return [badge('disabled'), subscription.disabled_reason ? h('div', { class: 'muted' }, subscription.disabled_reason) : null];
}

function filterForm(repository, navigate) {
  const repo = h('input', { name: 'repository', value: repository, placeholder: 'owner/name (empty: all you may see)', autocomplete: 'off' });
  return h('form', {
    class: 'filters',
    'aria-label': 'Filter subscriptions',
    onsubmit: (event) => {
      event.preventDefault();
      const value = repo.value.trim();
      if (value) remember(value);
      navigate(`/webhooks?${new URLSearchParams({ repository: value })}`);
    },
  }, field('Repository', repo), h('button', { type: 'submit' }, 'Show'));
}

export async function webhookView({ main, params, signal }) {
  const id = params[0];
  const subscription = await api(`/webhook-subscriptions/${encodeURIComponent(id)}`, { signal });
  main.append(
    h('p', {}, h('a', { href: '/webhooks' }, '← Webhooks')),
    h('h1', {}, 'Webhook subscription'),
    h('dl', { class: 'facts', id: 'subscription' },
      h('dt', {}, 'Id'), h('dd', {}, copyable(subscription.id, 'subscription id')),
      h('dt', {}, 'URL'), h('dd', {}, h('code', {}, subscription.url)),
      h('dt', {}, 'Events'), h('dd', {}, subscription.event_types.join(', ')),
      h('dt', {}, 'Repository'), h('dd', {}, subscription.repository || 'all'),
      h('dt', {}, 'Environment'), h('dd', {}, subscription.environment || 'all'),
      h('dt', {}, 'State'), h('dd', {}, stateOf(subscription)),
      h('dt', {}, 'Failing since'), h('dd', {}, subscription.failing_since ? time(subscription.failing_since) : '—'),
      h('dt', {}, 'Created'), h('dd', {}, time(subscription.created_at), ` by ${subscription.created_by}`)));
  const box = h('section', { id: 'deliveries' });
  main.append(box);
  await drawDeliveries(box, subscription, signal);
}

// `notice`: what the last action did, shown above the refreshed list.
async function drawDeliveries(box, subscription, signal, notice = null) {
  const status = h('div', { 'aria-live': 'polite', id: 'delivery-status' }, notice);
  const { deliveries } = await api(`/webhook-subscriptions/${encodeURIComponent(subscription.id)}/deliveries`, { params: { limit: PAGE }, signal });
  const redraw = (message) => drawDeliveries(box, subscription, signal, message).catch((err) => status.replaceChildren(errorBox(err, 'Reading deliveries')));
  box.replaceChildren();
  append(box, [h('h2', {}, 'Recent deliveries'), status]);
  if (!deliveries.length) {
    box.append(h('p', { class: 'muted' }, 'No deliveries yet.'));
    return;
  }
  box.append(h('table', { class: 'list' },
    h('thead', {}, h('tr', {}, ['Event', 'Status', 'Attempts', 'Answer', 'Took', 'Last attempt', 'Next retry', ''].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, deliveries.map((d) => h('tr', { dataset: { id: d.id, status: d.status } },
      h('td', {}, d.event_type, h('div', { class: 'muted' }, shortId(d.event_id))),
      h('td', {}, badge(d.status)),
      h('td', {}, String(d.attempt)),
      h('td', { title: d.response_body || '' }, d.response_status ? `HTTP ${d.response_status}` : '—', d.error ? h('div', { class: 'muted' }, d.error) : null),
      h('td', {}, d.duration_ms === null ? '—' : `${d.duration_ms} ms`),
      h('td', {}, d.last_attempt_at ? time(d.last_attempt_at) : '—'),
      h('td', {}, d.next_retry_at ? time(d.next_retry_at) : '—'),
      h('td', {}, subscription.active ? h('button', {
        type: 'button',
        class: 'small redeliver',
        onclick: async () => {
          try {
            await api(`/webhook-subscriptions/${encodeURIComponent(subscription.id)}/deliveries/${encodeURIComponent(d.id)}/redeliver`, { method: 'POST' });
            await redraw(h('p', { class: 'muted' }, `Delivery ${shortId(d.id)} is due again.`));
          } catch (err) {
            status.replaceChildren(errorBox(err, 'Redelivering'));
          }
        },
      }, 'Redeliver') : null))))));
}
