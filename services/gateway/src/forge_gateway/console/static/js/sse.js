// Server-Sent Events over fetch(): EventSource cannot send an Authorization header, and the token
// must never go into a URL. The parser follows the WHATWG "event stream interpretation" rules.
import { authFetch, errorFrom } from './api.js';

export class SseParser {
  // lastEventId: the id to resume after (Last-Event-ID), taken from the id field when its event
  // ends (the blank line), as the rules say: the id of an event cut short (a stream that ends in
  // its middle, as the gateway ends one when its token expires) is not, and that event comes again.
  constructor(lastEventId = '') {
    this.buffer = '';
    this.started = false;
    this.data = [];
    this.eventType = '';
    this.idBuffer = lastEventId;
    this.lastEventId = lastEventId;
  }

  // Feeds decoded text; returns the events completed by it, each {event, data, id}.
  feed(text) {
    this.buffer += text;
    if (!this.started && this.buffer.length) {
      if (this.buffer.charCodeAt(0) === 0xfeff) this.buffer = this.buffer.slice(1);
      this.started = true;
    }
    const events = [];
    for (;;) {
      const match = /\r\n|\n|\r/.exec(this.buffer);
      // A trailing CR may be the first half of a CRLF split across chunks: wait for more.
      if (!match || (match[0] === '\r' && match.index === this.buffer.length - 1)) break;
      const line = this.buffer.slice(0, match.index);
      this.buffer = this.buffer.slice(match.index + match[0].length);
      const event = this.line(line);
      if (event) events.push(event);
    }
    return events;
  }

  line(line) {
    if (line === '') {
      this.lastEventId = this.idBuffer;
      if (!this.data.length) {
        this.eventType = '';
        return null;
      }
      const event = { event: this.eventType || 'message', data: this.data.join('\n'), id: this.lastEventId };
      this.data = [];
      this.eventType = '';
      return event;
    }
    if (line.startsWith(':')) return null;
    const colon = line.indexOf(':');
    const name = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (name === 'data') this.data.push(value);
    else if (name === 'event') this.eventType = value;
    else if (name === 'id' && !value.includes('\0')) this.idBuffer = value;
    return null;
  }
}

// Reads one SSE response (with the session's token, authFetch()) until it ends; resolves with the
// id to resume after. It also ends before the run does: the gateway ends a stream when the token
// that opened it expires, and the caller reconnects (authFetch() renews an issuer login's token
// on the 401 the expired one gets). Throws ApiError when the server refuses (404 when the
// endpoint does not exist yet; a 401 once the session has ended), a TypeError/AbortError when
// the connection breaks or is aborted.
export async function readEventStream(url, { headers = {}, lastEventId = '', signal, onEvent, onOpen }) {
  const resp = await authFetch(url, {
    headers: { ...headers, Accept: 'text/event-stream', ...(lastEventId ? { 'Last-Event-ID': lastEventId } : {}) },
    signal,
    cache: 'no-store',
  });
  if (!resp.ok) throw await errorFrom(resp);
  const type = resp.headers.get('content-type') || '';
  if (!type.startsWith('text/event-stream')) {
    throw new TypeError(`expected text/event-stream, got ${type || 'no content type'}`);
  }
  onOpen?.();
  const parser = new SseParser(lastEventId);
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    for (const event of parser.feed(value)) onEvent(event);
  }
  return parser.lastEventId;
}
