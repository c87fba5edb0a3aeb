// Follows one run: the SSE stream first; polling when the server has no stream (404) or the
// stream keeps breaking. Each event is applied at once, and a (throttled) fetch of the whole run
// picks up what events do not carry (log links, phases created by discovery).
import { api, ApiError } from '../api.js';
import { pause } from '../dom.js';
import { readEventStream } from '../sse.js';

const POLL_MS = 2000;
const REFRESH_MS = 1000;
const MAX_STREAM_FAILURES = 3;
const QUICK_END_MS = 2000;

export class LiveRun {
  constructor(runId, { signal, onRun, onPatch, onMode, isDone }) {
    this.runId = runId;
    this.signal = signal;
    this.onRun = onRun;
    this.onPatch = onPatch;
    this.onMode = onMode;
    this.isDone = isDone;
    this.refreshTimer = null;
    this.lastRefresh = 0;
  }

  async refresh() {
    clearTimeout(this.refreshTimer);
    this.refreshTimer = null;
    this.lastRefresh = Date.now();
    this.onRun(await api(`/runs/${encodeURIComponent(this.runId)}`, { signal: this.signal }));
  }

  scheduleRefresh() {
    if (this.refreshTimer) return;
    const wait = Math.max(0, REFRESH_MS - (Date.now() - this.lastRefresh));
    this.refreshTimer = setTimeout(() => this.refresh().catch(() => {}), wait);
  }

  handle(event) {
    let data;
    try {
      data = JSON.parse(event.data);
    } catch {
      return;
    }
    // The first event carries the whole tree.
    if (event.event === 'run' && Array.isArray(data.phases)) this.onRun(data);
    else this.onPatch(event.event, data);
    this.scheduleRefresh();
  }

  async follow() {
    const url = `/v1/runs/${encodeURIComponent(this.runId)}/events`;
    let lastEventId = '';
    let failures = 0;
    while (!this.signal.aborted && !this.isDone()) {
      const opened = Date.now();
      let received = false;
      try {
        lastEventId = await readEventStream(url, {
          lastEventId,
          signal: this.signal,
          onOpen: () => this.onMode('live'),
          onEvent: (event) => {
            failures = 0;
            received = true;
            lastEventId = event.id || lastEventId;
            this.handle(event);
          },
        });
        // The stream ends after the run's terminal event (the final tree has the log links), or
        // before it when the gateway ends it because the token expired: then the loop goes on
        // after the last event, with a renewed token (or a 401 that ends the session).
        await this.refresh();
        if (!received && Date.now() - opened < QUICK_END_MS && !this.isDone()) {
          // A stream that ends at once, again and again, is no stream: count it as a break.
          failures += 1;
          if (failures >= MAX_STREAM_FAILURES) return this.poll();
          await pause(500 * failures, this.signal);
        }
      } catch (err) {
        if (this.signal.aborted) return;
        if (err instanceof ApiError && [404, 405, 501].includes(err.status)) return this.poll();
        if (err instanceof ApiError && err.status === 401) throw err;
        failures += 1;
        this.onMode('reconnecting');
        if (failures >= MAX_STREAM_FAILURES) return this.poll();
        await pause(500 * failures, this.signal);
        await this.refresh().catch(() => {});
      }
    }
    clearTimeout(this.refreshTimer);
  }

  async poll() {
    this.onMode('polling');
    while (!this.signal.aborted && !this.isDone()) {
      try {
        await this.refresh();
      } catch (err) {
        if (this.signal.aborted) return;
        if (err instanceof ApiError && err.status === 401) throw err;
      }
      if (this.isDone()) break;
      await pause(POLL_MS, this.signal);
    }
    clearTimeout(this.refreshTimer);
  }
}
