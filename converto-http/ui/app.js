// The converto web UI: convert files, follow them live, browse and inspect conversions.

import * as api from './api.js';
import { buildForm } from './form.js';

const $ = (selector, root = document) => root.querySelector(selector);

const EXTENSIONS = { jpg: 'jpeg', jpe: 'jpeg', tif: 'tiff', stp: 'step', igs: 'iges', yml: 'yaml' };
const MESH_FORMATS = new Set(['stl', 'obj', 'ply']);
const IMAGE_FORMATS = new Set(['png', 'jpeg', 'webp', 'gif', 'bmp', 'tiff']);
const ACTIVE = new Set(['queued', 'running']);
const MAX_STREAMS = 4;
const PAGE_SIZE = 50;

const state = {
  routes: [],
  sources: [],
  pending: [],
  items: new Map(),
  cursor: null,
  loading: false,
  exhausted: false,
  filters: {},
  generation: 0,
  streams: new Map(),
  inputs: new Map(),
  thumbs: new Map(),
  detailClose: null,
};

// ---- messages --------------------------------------------------------------------------

const toast = document.createElement('div');
toast.id = 'toast';
toast.className = 'toast';
toast.setAttribute('role', 'status');
toast.setAttribute('aria-live', 'polite');
document.body.append(toast);
let toastTimer = 0;
function say(text, isError = false) {
  toast.textContent = text;
  toast.classList.toggle('error', isError);
  toast.classList.add('shown');
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => toast.classList.remove('shown'), 6000);
}

function describe(error) {
  return error instanceof api.ApiError ? error.message : `Network error: ${error.message}`;
}

function bytes(n) {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = -1;
  do {
    v /= 1024;
    i++;
  } while (v >= 1024 && i < units.length - 1);
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : '';
}

// ---- sign in ---------------------------------------------------------------------------

const signin = $('#signin');
let signinWaiters = [];

function askForKey() {
  if (!signin.open) {
    $('#signin-error').textContent = api.apiKey() ? 'The API key was refused.' : '';
    signin.showModal();
    $('#signin-key').focus();
  }
  return new Promise((resolve) => signinWaiters.push(resolve));
}

api.onUnauthorized(() => {
  api.setApiKey('');
  showAccount();
  askForKey();
});

$('#signin-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const key = $('#signin-key').value.trim();
  if (!key) return;
  api.setApiKey(key);
  $('#signin-submit').disabled = true;
  try {
    await api.formats();
    signin.close();
    $('#signin-key').value = '';
    showAccount();
    const waiters = signinWaiters;
    signinWaiters = [];
    waiters.forEach((w) => w());
  } catch (e) {
    if (!signin.open) signin.showModal();
    $('#signin-error').textContent = describe(e);
  } finally {
    $('#signin-submit').disabled = false;
  }
});
signin.addEventListener('cancel', (event) => event.preventDefault());

function showAccount() {
  const signedIn = Boolean(api.apiKey());
  $('#account-state').textContent = signedIn ? 'Signed in with an API key' : '';
  $('#sign-out').hidden = !signedIn;
}

$('#sign-out').addEventListener('click', () => {
  api.setApiKey('');
  location.reload();
});

/** Runs `fn`; when the API wants a key, asks for one and runs it again. */
async function authorized(fn) {
  for (;;) {
    try {
      return await fn();
    } catch (e) {
      if (e instanceof api.ApiError && e.status === 401) {
        await askForKey();
        continue;
      }
      throw e;
    }
  }
}

// ---- formats and new conversions ----------------------------------------------------------

function detect(file) {
  const ext = (file.name.split('.').pop() || '').toLowerCase();
  const format = EXTENSIONS[ext] || ext;
  return state.sources.includes(format) ? format : '';
}

function routesFrom(source) {
  return state.routes.filter((r) => r.source === source);
}

function routeOf(source, target) {
  return state.routes.find((r) => r.source === source && r.target === target);
}

function fillSelect(select, values, chosen, empty) {
  select.replaceChildren();
  if (empty) select.add(new Option(empty, ''));
  for (const v of values) select.add(new Option(v, v));
  if (chosen !== undefined && values.includes(chosen)) select.value = chosen;
}

async function loadFormats() {
  const f = await authorized(api.formats);
  state.routes = f.routes;
  state.sources = f.sources;
  fillSelect($('#f-source'), f.sources, undefined, 'any');
  fillSelect($('#f-target'), f.targets, undefined, 'any');
  $('#formats-state').textContent = `Accepted: ${f.sources.join(', ')}.`;
}

let pendingSerial = 0;

function addFiles(files, preset = {}) {
  for (const file of files) {
    const n = ++pendingSerial;
    const li = document.createElement('li');
    li.className = 'pending-item';
    li.dataset.name = file.name;
    const head = document.createElement('div');
    head.className = 'line';
    const name = document.createElement('strong');
    name.textContent = file.name;
    const size = document.createElement('span');
    size.className = 'muted';
    size.textContent = bytes(file.size);
    head.append(name, size);

    const row = document.createElement('div');
    row.className = 'row';
    const field = (labelText, control) => {
      const wrap = document.createElement('div');
      wrap.className = 'field';
      const lab = document.createElement('label');
      control.id = `p${n}-${labelText.toLowerCase().replace(/\W+/g, '-')}`;
      lab.htmlFor = control.id;
      lab.textContent = labelText;
      wrap.append(lab, control);
      row.append(wrap);
      return control;
    };
    const source = field('From', document.createElement('select'));
    const target = field('To', document.createElement('select'));
    const labels = field('Labels (k=v,k2=v2)', document.createElement('input'));
    labels.type = 'text';
    labels.autocomplete = 'off';
    labels.value = preset.labels || '';

    const options = document.createElement('fieldset');
    options.className = 'options';
    const legend = document.createElement('legend');
    legend.textContent = 'Options';
    const fields = document.createElement('div');
    options.append(legend, fields);

    const message = document.createElement('p');
    message.className = 'error';
    message.setAttribute('role', 'alert');
    const actions = document.createElement('div');
    actions.className = 'actions';
    const go = document.createElement('button');
    go.type = 'button';
    go.className = 'convert';
    go.textContent = 'Convert';
    go.setAttribute('aria-label', `Convert ${file.name}`);
    const drop = document.createElement('button');
    drop.type = 'button';
    drop.className = 'secondary';
    drop.textContent = 'Remove';
    drop.setAttribute('aria-label', `Remove ${file.name}`);
    actions.append(go, drop);
    li.append(head, row, options, message, actions);

    const entry = { file, li, read: () => ({ options: {}, errors: {} }), message, go };
    const setTarget = () => {
      const route = routeOf(source.value, target.value);
      entry.read = buildForm(fields, route?.options_schema);
      if (preset.options && route) fillOptions(fields, preset.options);
      go.disabled = !route;
    };
    const setSource = () => {
      const routes = routesFrom(source.value);
      const targets = routes.map((r) => r.target);
      fillSelect(target, targets, preset.target ?? targets[0], targets.length ? undefined : '—');
      // A chained route says which formats it passes through.
      for (const option of target.options) {
        const via = routes.find((r) => r.target === option.value)?.via;
        if (via?.length) option.text = `${option.value} (via ${via.join(', ')})`;
      }
      setTarget();
    };
    fillSelect(source, state.sources, preset.source || detect(file), 'choose…');
    source.addEventListener('change', setSource);
    target.addEventListener('change', setTarget);
    setSource();
    if (!source.value) message.textContent = 'The format of this file was not recognised: choose it.';

    entry.submit = async () => {
      const { options: opts, errors } = entry.read();
      const firstError = Object.entries(errors)[0];
      if (firstError) {
        message.textContent = `Option ${firstError[0]}: ${firstError[1]}`;
        return false;
      }
      if (!source.value || !target.value) {
        message.textContent = 'Choose the formats first.';
        return false;
      }
      go.disabled = true;
      message.textContent = '';
      li.setAttribute('aria-busy', 'true');
      try {
        const spec = { file, source: source.value, target: target.value, options: opts, labels: labels.value.trim() };
        const conversion = await authorized(() => api.submit(spec));
        state.inputs.set(conversion.id, spec);
        removePending(entry);
        upsert(conversion, { prepend: true });
        say(`${file.name}: submitted`);
        return true;
      } catch (e) {
        message.textContent = describe(e);
        go.disabled = false;
        return false;
      } finally {
        li.removeAttribute('aria-busy');
      }
    };
    go.addEventListener('click', entry.submit);
    drop.addEventListener('click', () => removePending(entry));
    state.pending.push(entry);
    $('#pending').append(li);
  }
  $('#submit-all').hidden = state.pending.length < 2;
}

function fillOptions(container, options) {
  for (const [k, v] of Object.entries(options || {})) {
    const input = container.querySelector(`[name="${CSS.escape(k)}"]`);
    if (!input) continue;
    if (input.type === 'checkbox') input.checked = Boolean(v);
    else input.value = Array.isArray(v) ? v.join(',') : String(v);
  }
}

function removePending(entry) {
  state.pending = state.pending.filter((e) => e !== entry);
  entry.li.remove();
  $('#submit-all').hidden = state.pending.length < 2;
}

$('#submit-all').addEventListener('click', async () => {
  for (const entry of [...state.pending]) await entry.submit();
});

const drop = $('#drop');
const pick = $('#pick');
pick.addEventListener('change', () => {
  addFiles([...pick.files]);
  pick.value = '';
});
drop.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' || e.key === ' ') {
    e.preventDefault();
    pick.click();
  }
});
drop.addEventListener('dragover', (e) => {
  e.preventDefault();
  drop.classList.add('over');
});
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (e) => {
  e.preventDefault();
  drop.classList.remove('over');
  addFiles([...(e.dataTransfer?.files || [])]);
});

// ---- the list ----------------------------------------------------------------------------

const list = $('#list');
const template = $('#item-template');

function isShown(c) {
  const f = state.filters;
  if (f.status && !f.status.split(',').includes(c.status)) return false;
  if (f.source_format && c.source_format !== f.source_format) return false;
  if (f.target_format && c.target_format !== f.target_format) return false;
  return true;
}

function upsert(c, { prepend = false } = {}) {
  let item = state.items.get(c.id);
  if (!item) {
    if (prepend && !isShown(c)) return;
    const li = template.content.firstElementChild.cloneNode(true);
    li.dataset.id = c.id;
    item = { li, data: c };
    state.items.set(c.id, item);
    $('.name', li).addEventListener('click', () => openDetail(c.id));
    $('.thumb', li).addEventListener('click', () => openDetail(c.id));
    $('.cancel', li).addEventListener('click', () => doCancel(c.id));
    $('.delete', li).addEventListener('click', () => doDelete(c.id));
    $('.retry', li).addEventListener('click', () => resubmit(c.id));
    if (prepend) list.prepend(li);
    else list.append(li);
  }
  item.data = c;
  render(item);
  watch();
}

function render({ li, data: c }) {
  const name = c.input?.name || c.id;
  li.dataset.status = c.status;
  $('.name', li).textContent = name;
  $('.name', li).setAttribute('aria-label', `${name}: details`);
  $('.route', li).textContent = `${c.source_format} → ${c.target_format}`;
  const status = $('.status', li);
  status.textContent = c.status;
  status.className = `status s-${c.status}`;
  const bar = $('progress', li);
  const pct = c.status === 'succeeded' ? 100 : c.progress?.percent ?? 0;
  bar.value = pct;
  bar.setAttribute('aria-label', `${name}: ${pct}%`);
  $('.progress-row', li).hidden = !(ACTIVE.has(c.status) || c.status === 'succeeded');
  const stage = ACTIVE.has(c.status) ? c.progress?.stage || (c.status === 'queued' ? 'waiting' : '') : '';
  $('.stage', li).textContent = ACTIVE.has(c.status) ? `${pct}%${stage ? ` · ${stage}` : ''}` : '';
  $('.message', li).textContent = c.error && c.status !== 'succeeded' ? c.error.message : '';
  const artifacts = c.artifacts || [];
  $('.meta', li).textContent = [
    when(c.created_at),
    c.input ? bytes(c.input.size) : '',
    artifacts.length ? `${artifacts.length} artifact${artifacts.length > 1 ? 's' : ''}` : '',
  ]
    .filter(Boolean)
    .join(' · ');
  $('.cancel', li).hidden = !ACTIVE.has(c.status);
  $('.cancel', li).setAttribute('aria-label', `Cancel ${name}`);
  $('.retry', li).hidden = !(c.status === 'failed' || c.status === 'cancelled');
  $('.retry', li).setAttribute('aria-label', `Resubmit ${name}`);
  $('.delete', li).hidden = ACTIVE.has(c.status);
  $('.delete', li).setAttribute('aria-label', `Delete ${name}`);
  setThumb(li, c);
}

function thumbArtifact(c) {
  const arts = c.artifacts || [];
  return (
    arts.find((a) => a.name === 'preview.png') ||
    arts.filter((a) => IMAGE_FORMATS.has(a.format) && a.size < 4 * 1024 * 1024).sort((a, b) => a.size - b.size)[0]
  );
}

/** An artifact as an image URL: its own URL when no key is needed, else a blob fetched with it. */
async function imageUrl(artifact) {
  if (artifact.signed_url) return artifact.signed_url;
  if (!api.apiKey()) return artifact.url;
  const buffer = await api.artifactBytes(artifact);
  return URL.createObjectURL(new Blob([buffer], { type: 'image/png' }));
}

function setThumb(li, c) {
  const box = $('.thumb', li);
  const art = thumbArtifact(c);
  const key = art ? `${c.id}/${art.name}` : '';
  if (box.dataset.key === key) return;
  box.dataset.key = key;
  box.replaceChildren();
  box.setAttribute('aria-label', `Open details of ${c.input?.name || c.id}`);
  if (!art) {
    const span = document.createElement('span');
    span.textContent = c.target_format.toUpperCase();
    span.setAttribute('aria-hidden', 'true');
    box.append(span);
    return;
  }
  const img = document.createElement('img');
  img.alt = art.name === 'preview.png' ? 'Preview' : art.name;
  img.decoding = 'async';
  img.loading = 'lazy';
  box.append(img);
  imageUrl(art)
    .then((url) => {
      img.src = url;
    })
    .catch(() => img.remove());
}

async function loadPage() {
  if (state.loading || state.exhausted) return;
  state.loading = true;
  list.setAttribute('aria-busy', 'true');
  const generation = state.generation;
  try {
    const page = await authorized(() => api.list(state.filters, state.cursor, PAGE_SIZE));
    if (generation !== state.generation) return;
    for (const c of page.items) upsert(c);
    state.cursor = page.next_cursor || null;
    state.exhausted = !state.cursor;
    $('#list-state').textContent = state.items.size
      ? `${state.items.size} conversion${state.items.size > 1 ? 's' : ''}${state.exhausted ? '' : ', more below'}`
      : 'No conversions yet.';
  } catch (e) {
    $('#list-state').textContent = describe(e);
    state.exhausted = true;
  } finally {
    if (generation === state.generation) {
      state.loading = false;
      list.setAttribute('aria-busy', 'false');
    }
  }
  // A short page may leave the sentinel in view: keep going.
  if (generation === state.generation && !state.exhausted && sentinelVisible) loadPage();
}

let sentinelVisible = false;
new IntersectionObserver(
  (entries) => {
    sentinelVisible = entries.some((e) => e.isIntersecting);
    if (sentinelVisible) loadPage();
  },
  { rootMargin: '400px' },
).observe($('#sentinel'));

function resetList() {
  state.generation++;
  state.loading = false;
  state.exhausted = false;
  state.cursor = null;
  for (const [id] of state.streams) stopStream(id);
  state.items.clear();
  list.replaceChildren();
  loadPage();
}

function dayStart(value, plusDays = 0) {
  const d = new Date(`${value}T00:00`);
  d.setDate(d.getDate() + plusDays);
  return d.toISOString();
}

$('#filters').addEventListener('submit', (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  const f = {};
  for (const key of ['q', 'status', 'source_format', 'target_format', 'label']) {
    const v = String(form.get(key) || '').trim();
    if (v) f[key] = v;
  }
  const after = form.get('created_after');
  const before = form.get('created_before');
  if (after) f.created_after = dayStart(after);
  if (before) f.created_before = dayStart(before, 1);
  state.filters = f;
  resetList();
});
$('#filters').addEventListener('reset', () => {
  state.filters = {};
  setTimeout(resetList);
});

// ---- live progress ---------------------------------------------------------------------------

function stopStream(id) {
  state.streams.get(id)?.abort();
  state.streams.delete(id);
}

async function refresh(id) {
  try {
    const c = await api.getConversion(id);
    if (state.items.has(id)) upsert(c);
  } catch (e) {
    if (e instanceof api.ApiError && e.status === 404) dropItem(id);
  }
}

function follow(id) {
  const abort = new AbortController();
  state.streams.set(id, abort);
  api
    .follow(
      id,
      (type, ev) => {
        const item = state.items.get(id);
        if (!item) return;
        if (type === 'progress' && ev.progress && ACTIVE.has(item.data.status)) {
          item.data = { ...item.data, status: 'running', progress: ev.progress };
          render(item);
        } else if (type === 'status') {
          item.data = { ...item.data, status: ev.status, error: ev.error || item.data.error };
          if (ev.status === 'queued') item.data.progress = null;
          render(item);
          if (!ACTIVE.has(ev.status)) refresh(id);
        }
      },
      abort.signal,
    )
    .catch(() => {})
    .finally(() => {
      if (state.streams.get(id) === abort) {
        state.streams.delete(id);
        // The stream ended (finished, or the connection dropped): read the record.
        if (!abort.signal.aborted) refresh(id).then(watch);
      }
    });
}

let pollTimer = 0;
/** Streams for the newest active conversions; a slow poll for the others. */
function watch() {
  const active = [...state.items.values()].filter((i) => ACTIVE.has(i.data.status));
  for (const item of active) {
    if (state.streams.size >= MAX_STREAMS) break;
    if (!state.streams.has(item.data.id)) follow(item.data.id);
  }
  const unwatched = active.filter((i) => !state.streams.has(i.data.id));
  if (unwatched.length && !pollTimer) {
    pollTimer = setTimeout(async () => {
      pollTimer = 0;
      await Promise.all(unwatched.slice(0, 8).map((i) => refresh(i.data.id)));
      watch();
    }, 3000);
  }
}

// ---- actions -----------------------------------------------------------------------------

function dropItem(id) {
  stopStream(id);
  state.items.get(id)?.li.remove();
  state.items.delete(id);
}

async function doCancel(id) {
  try {
    const c = await authorized(() => api.cancel(id));
    if (c) upsert(c);
    else refresh(id);
    say('Cancelled');
  } catch (e) {
    say(describe(e), true);
  }
}

async function doDelete(id) {
  const item = state.items.get(id);
  const name = item?.data.input?.name || id;
  if (!confirm(`Delete ${name} and its files?`)) return;
  try {
    await authorized(() => api.remove(id));
    dropItem(id);
    if ($('#detail').open && $('#detail').dataset.id === id) $('#detail').close();
    say(`${name}: deleted`);
  } catch (e) {
    say(describe(e), true);
  }
}

async function resubmit(id) {
  const spec = state.inputs.get(id);
  const c = state.items.get(id)?.data;
  if (spec) {
    try {
      const conversion = await authorized(() => api.submit(spec));
      state.inputs.set(conversion.id, spec);
      upsert(conversion, { prepend: true });
      say(`${spec.file.name}: submitted again`);
    } catch (e) {
      say(describe(e), true);
    }
    return;
  }
  // The input is not in this tab: pick the file again, with the same route and options.
  const input = document.createElement('input');
  input.type = 'file';
  input.addEventListener('change', () => {
    const labels = Object.entries(c?.labels || {}).map(([k, v]) => `${k}=${v}`).join(',');
    addFiles([...input.files], { source: c?.source_format, target: c?.target_format, options: c?.options, labels });
    $('#pending').scrollIntoView({ behavior: 'smooth' });
  });
  say('Choose the file to convert again');
  input.click();
}

// ---- detail ------------------------------------------------------------------------------

const detail = $('#detail');
$('#detail-close').addEventListener('click', () => detail.close());
detail.addEventListener('close', () => {
  state.detailClose?.();
  state.detailClose = null;
  $('#detail-body').replaceChildren();
});

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'class') node.className = v;
    else if (k in node) node[k] = v;
    else node.setAttribute(k, v);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

async function openDetail(id) {
  const body = $('#detail-body');
  detail.dataset.id = id;
  body.replaceChildren(el('p', { class: 'muted' }, 'Loading…'));
  if (!detail.open) detail.showModal();
  let c;
  try {
    c = await authorized(() => api.getConversion(id));
  } catch (e) {
    body.replaceChildren(el('p', { class: 'error', role: 'alert' }, describe(e)));
    return;
  }
  if (state.items.has(id)) upsert(c);
  $('#detail-title').textContent = c.input?.name || c.id;
  const facts = el('dl', { class: 'facts' });
  const fact = (k, v) => v && facts.append(el('dt', {}, k), el('dd', {}, v));
  fact('Status', c.status + (c.progress && ACTIVE.has(c.status) ? ` (${c.progress.percent}%)` : ''));
  fact('Route', `${c.source_format} → ${c.target_format}`);
  fact('Input', c.input ? `${c.input.name || ''} ${bytes(c.input.size)}` : '');
  fact('Created', when(c.created_at));
  fact('Started', when(c.started_at));
  fact('Finished', when(c.finished_at));
  fact('Attempts', String(c.attempts));
  const labels = Object.entries(c.labels || {}).map(([k, v]) => `${k}=${v}`).join(', ');
  fact('Labels', labels);
  fact('Description', c.description || '');
  fact('Tags', (c.tags || []).map((t) => `#${t}`).join(' '));
  if (c.options && Object.keys(c.options).length) fact('Options', JSON.stringify(c.options));
  fact('Id', c.id);
  const parts = [facts];
  if (c.error && c.status !== 'succeeded') {
    parts.push(el('p', { class: 'error', role: 'alert' }, `${c.error.message} (${c.error.code})`));
  }
  const arts = c.artifacts || [];
  if (arts.length) {
    const rows = arts.map((a) =>
      el(
        'tr',
        {},
        el('td', {}, el('a', { href: a.signed_url || a.url, download: a.name, class: 'download' }, a.name)),
        el('td', {}, a.format),
        el('td', { class: 'num' }, bytes(a.size)),
        el('td', { class: 'checksum' }, el('code', {}, a.checksum)),
      ),
    );
    parts.push(
      el('h3', {}, 'Artifacts'),
      el(
        'div',
        { class: 'table-wrap' },
        el(
          'table',
          { class: 'artifacts' },
          el('thead', {}, el('tr', {}, el('th', {}, 'Name'), el('th', {}, 'Format'), el('th', {}, 'Size'), el('th', {}, 'Checksum'))),
          el('tbody', {}, ...rows),
        ),
      ),
    );
  }
  const mesh = arts.find((a) => MESH_FORMATS.has(a.format));
  const images = arts.filter((a) => IMAGE_FORMATS.has(a.format) && a.name !== 'preview.png');
  const preview = arts.find((a) => a.name === 'preview.png');
  if (mesh) {
    const canvas = el('canvas', {
      class: 'viewer',
      tabIndex: 0,
      role: 'img',
      'aria-label': `3D view of ${mesh.name}: drag or use the arrow keys to rotate, shift to pan, + and - to zoom`,
    });
    const status = el('p', { class: 'muted', 'aria-live': 'polite' }, 'Loading the 3D view…');
    parts.push(el('h3', {}, '3D view'), canvas, status);
    loadViewer(canvas, status, mesh);
  }
  if (preview) {
    const img = el('img', { alt: `Preview of ${c.input?.name || 'the model'}`, class: 'preview' });
    imageUrl(preview).then((u) => (img.src = u));
    parts.push(el('h3', {}, 'Preview'), img);
  }
  if (images.length) {
    const figures = images.map((a) => {
      const img = el('img', { alt: a.name, loading: 'lazy' });
      imageUrl(a).then((u) => (img.src = u));
      return el('figure', {}, img, el('figcaption', {}, `${a.name} · ${bytes(a.size)}`));
    });
    parts.push(el('h3', {}, 'Images'), el('div', { class: 'variants' }, ...figures));
  }
  const actions = el('div', { class: 'actions' });
  if (ACTIVE.has(c.status)) {
    actions.append(el('button', { type: 'button', onclick: () => doCancel(id).then(() => openDetail(id)) }, 'Cancel'));
  } else {
    if (c.status === 'failed' || c.status === 'cancelled') {
      actions.append(el('button', { type: 'button', onclick: () => { detail.close(); resubmit(id); } }, 'Resubmit'));
    }
    actions.append(el('button', { type: 'button', class: 'danger', onclick: () => doDelete(id) }, 'Delete'));
  }
  parts.push(actions);
  body.replaceChildren(...parts);
}

async function loadViewer(canvas, status, artifact) {
  try {
    const { parseMesh, showMesh } = await import('./viewer.js');
    const buffer = await api.artifactBytes(artifact);
    const positions = parseMesh(artifact.format, buffer);
    if (!canvas.isConnected) return;
    state.detailClose?.();
    state.detailClose = showMesh(canvas, positions);
    status.textContent = `${(positions.length / 9).toLocaleString()} triangles`;
    canvas.dataset.triangles = String(positions.length / 9);
  } catch (e) {
    status.textContent = `No 3D view: ${e.message}`;
  }
}

// ---- start -------------------------------------------------------------------------------

async function start() {
  showAccount();
  try {
    await loadFormats();
  } catch (e) {
    $('#formats-state').textContent = describe(e);
  }
  loadPage();
}

start();
