// The API as the page uses it: an optional API key (this tab's sessionStorage only), problem
// details turned into errors, and Server-Sent Events read through fetch, because EventSource
// cannot send an Authorization header.

const KEY = 'converto.apiKey';

export function apiKey() {
  return sessionStorage.getItem(KEY) || '';
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

/** An API answer that was not 2xx: `detail` from the problem body when there is one. */
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

const listeners = new Set();
/** Called with no arguments whenever the API answers 401 (the page then asks for a key). */
export function onUnauthorized(fn) {
  listeners.add(fn);
}

function headers(extra) {
  const h = new Headers(extra || {});
  const key = apiKey();
  if (key) h.set('Authorization', `Bearer ${key}`);
  return h;
}

async function failure(resp) {
  let problem = null;
  try {
    problem = await resp.json();
  } catch {
    problem = null;
  }
  if (resp.status === 401) listeners.forEach((fn) => fn());
  return new ApiError(resp.status, problem);
}

/** fetch with the key; rejects with ApiError unless the answer is 2xx. */
export async function request(path, init = {}) {
  const resp = await fetch(path, { ...init, headers: headers(init.headers) });
  if (!resp.ok) throw await failure(resp);
  return resp;
}

export async function json(path, init) {
  const resp = await request(path, init);
  return resp.status === 204 ? null : resp.json();
}

export const formats = () => json('/v1/formats');
export const getConversion = (id) => json(`/v1/conversions/${encodeURIComponent(id)}`);
export const cancel = (id) =>
  json(`/v1/conversions/${encodeURIComponent(id)}/cancel`, { method: 'POST' });
export const remove = (id) =>
  request(`/v1/conversions/${encodeURIComponent(id)}`, { method: 'DELETE' });

/** One page of the list; `filters` holds only the query parameters the API knows. */
export function list(filters, cursor, limit = 50) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
  q.set('limit', String(limit));
  if (cursor) q.set('cursor', cursor);
  return json(`/v1/conversions?${q}`);
}

/** Submits one file (multipart): the small fields first, so the server can refuse early. */
export function submit({ file, target, source, options, labels }) {
  const form = new FormData();
  form.append('target_format', target);
  if (source) form.append('source_format', source);
  if (options && Object.keys(options).length) form.append('options', JSON.stringify(options));
  if (labels) form.append('labels', labels);
  form.append('file', file, file.name);
  return json('/v1/conversions', { method: 'POST', body: form });
}

/** An artifact's bytes (with the key). */
export async function artifactBytes(artifact) {
  const resp = await request(artifact.signed_url || artifact.url);
  return resp.arrayBuffer();
}

/**
 * Follows a conversion's events until it ends or `signal` aborts: calls `onEvent(type, data)`
 * for each `status` and `progress` event. Resolves when the stream closes.
 */
export async function follow(id, onEvent, signal) {
  const resp = await request(`/v1/conversions/${encodeURIComponent(id)}/events`, {
    headers: { Accept: 'text/event-stream' },
    signal,
  });
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, '\n');
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let type = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
        if (field === 'event') type = text;
        else if (field === 'data') data.push(text);
      }
      if (!data.length) continue;
      try {
        onEvent(type, JSON.parse(data.join('\n')));
      } catch {
        // not JSON: not one of ours
      }
    }
  }
}
