// Drives the converto web UI in Debian's headless Chromium through playwright-core (nothing is
// downloaded). Started by converto-http/tests/browser.rs, which runs the real binary:
//
//   node run.mjs
//
// Environment: BASE_URL (a server without auth, with the CAD stub routes), AUTH_BASE_URL and
// API_KEY (a server with --auth keys and a key for it), STL and JPEG (real files), CHROMIUM
// (default /usr/bin/chromium), SCREENSHOTS (where a failing scenario leaves its screenshot).
//
// Every wait is on a state of the page or the API, with generous timeouts; nothing sleeps.
// Exits 0 when every scenario passed. Prints the figures it measures.

import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { chromium } from 'playwright-core';

const env = (name, fallback) => {
  const v = process.env[name] ?? fallback;
  if (v === undefined) throw new Error(`${name} is not set`);
  return v;
};
const BASE = env('BASE_URL');
const AUTH_BASE = env('AUTH_BASE_URL', '');
const API_KEY = env('API_KEY', '');
const STL = env('STL');
const JPEG = env('JPEG');
const SCREENSHOTS = env('SCREENSHOTS', 'browser-screenshots');
const LONG = 180_000; // a conversion on a loaded 2-core CI box
const ONLY = process.env.ONLY ? process.env.ONLY.split(',') : null;

const sha256 = (buf) => createHash('sha256').update(buf).digest('hex');
const log = (...a) => console.log('[browser]', ...a);

function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function api(base, path, init = {}, key = '') {
  const headers = new Headers(init.headers || {});
  if (key) headers.set('Authorization', `Bearer ${key}`);
  for (;;) {
    const resp = await fetch(base + path, { ...init, headers });
    if (resp.status === 429) {
      // The per-tenant rate: wait as long as the server says, on the server's clock.
      const secs = Number(resp.headers.get('retry-after') || '1');
      await new Promise((r) => setTimeout(r, secs * 1000));
      continue;
    }
    return resp;
  }
}

async function apiJson(base, path, init, key) {
  const resp = await api(base, path, init, key);
  const body = await resp.json();
  check(resp.ok, `${path}: ${resp.status} ${JSON.stringify(body)}`);
  return body;
}

async function submitViaApi(base, { name, bytes, target, labels, options }, key) {
  const form = new FormData();
  form.append('target_format', target);
  if (labels) form.append('labels', labels);
  if (options) form.append('options', JSON.stringify(options));
  form.append('file', new Blob([bytes]), name);
  return apiJson(base, '/v1/conversions', { method: 'POST', body: form }, key);
}

// ---- the browser ----------------------------------------------------------------------------

const browser = await chromium.launch({
  executablePath: env('CHROMIUM', '/usr/bin/chromium'),
  headless: true,
  args: ['--no-sandbox', '--use-angle=swiftshader', '--enable-unsafe-swiftshader', '--ignore-gpu-blocklist'],
});

const failures = [];
const figures = {};
mkdirSync(SCREENSHOTS, { recursive: true });

async function newPage(context) {
  const page = await context.newPage();
  page.setDefaultTimeout(LONG);
  page.problems = [];
  page.on('console', (m) => {
    if (m.type() === 'error' && !/status of (401|404|409|429)/.test(m.text())) page.problems.push(m.text());
  });
  page.on('pageerror', (e) => page.problems.push(`page error: ${e.message}`));
  return page;
}

async function scenario(name, fn) {
  if (ONLY && !ONLY.includes(name)) return;
  const started = Date.now();
  const context = await browser.newContext({ acceptDownloads: true });
  const page = await newPage(context);
  try {
    await fn(page, context);
    const problems = page.problems.filter((p) => /Content Security Policy|page error|Uncaught/i.test(p));
    check(!problems.length, `console errors: ${problems.join(' | ')}`);
    log(`ok   ${name} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
  } catch (e) {
    const shot = join(SCREENSHOTS, `${name}.png`);
    await page.screenshot({ path: shot, fullPage: true }).catch(() => {});
    failures.push(name);
    log(`FAIL ${name}: ${e.stack || e}\n     screenshot: ${shot}\n     console: ${page.problems.join(' | ')}`);
  } finally {
    await context.close();
  }
}

const item = (page, id) => page.locator(`#list li.item[data-id="${id}"]`);
const itemNamed = (page, name) => page.locator('#list li.item', { has: page.locator('.name', { hasText: name }) }).first();

async function idOf(page, name) {
  const li = itemNamed(page, name);
  await li.waitFor();
  return li.getAttribute('data-id');
}

// Waits go through locators: the page's CSP forbids the eval that waitForFunction needs.
async function waitStatus(page, id, status, timeout = LONG) {
  await page.locator(`#list li.item[data-id="${id}"][data-status="${status}"]`).waitFor({ timeout });
}

async function pickFiles(page, files) {
  await page.locator('#pick').setInputFiles(files);
  for (const f of files) await page.locator(`#pending li[data-name="${f.name}"]`).waitFor();
}

async function pendingItem(page, name) {
  return page.locator(`#pending li[data-name="${name}"]`);
}

async function imageLoaded(locator) {
  await locator.waitFor();
  const handle = await locator.elementHandle();
  await handle.evaluate(
    (img) =>
      img.complete && img.naturalWidth > 0
        ? true
        : new Promise((ok, fail) => {
            img.addEventListener('load', () => ok(true), { once: true });
            img.addEventListener('error', () => fail(new Error(`image did not load: ${img.src}`)), { once: true });
          }),
  );
  return handle.evaluate((img) => img.naturalWidth);
}

// ---- scenarios -------------------------------------------------------------------------------

const stlBytes = readFileSync(STL);
const jpegBytes = readFileSync(JPEG);
const stlName = basename(STL);
const jpegName = basename(JPEG);

await scenario('page-and-caching', async (page) => {
  const resp = await page.goto(BASE);
  const h = resp.headers();
  check(h['content-security-policy']?.includes("default-src 'self'"), `CSP: ${h['content-security-policy']}`);
  check(h['cache-control'] === 'no-cache', `index cache-control: ${h['cache-control']}`);
  await page.locator('#formats-state', { hasText: 'stl' }).waitFor();
  // Weight of the page, as a browser downloads it (gzip) and unpacked.
  const assets = await page.evaluate(() =>
    [location.href, ...[...document.querySelectorAll('script[src],link[rel=stylesheet]')].map((e) => e.src || e.href)],
  );
  assets.push(assets[1].replace('app.js', 'api.js'), assets[1].replace('app.js', 'form.js'), assets[1].replace('app.js', 'viewer.js'));
  let raw = 0;
  let gz = 0;
  for (const url of assets) {
    const plain = await fetch(url, { headers: { 'Accept-Encoding': 'identity' } });
    const body = Buffer.from(await plain.arrayBuffer());
    raw += body.length;
    const zipped = await fetch(url, { headers: { 'Accept-Encoding': 'gzip' } });
    check(zipped.headers.get('content-encoding') === 'gzip', `${url} not gzip`);
    const etag = zipped.headers.get('etag');
    const again = await fetch(url, { headers: { 'Accept-Encoding': 'gzip', 'If-None-Match': etag } });
    check(again.status === 304, `${url}: If-None-Match answered ${again.status}`);
    gz += Number(zipped.headers.get('content-length') || (await zipped.arrayBuffer()).byteLength);
    if (url.includes('/ui/')) {
      check(/immutable/.test(plain.headers.get('cache-control')), `${url}: ${plain.headers.get('cache-control')}`);
    }
  }
  figures.page_weight_bytes = raw;
  figures.page_weight_gzip_bytes = gz;
});

let stlId;
let jpegId;
await scenario('upload-stl-and-jpeg', async (page) => {
  await page.goto(BASE);
  await page.locator('#formats-state', { hasText: 'stl' }).waitFor();
  await pickFiles(page, [
    { name: stlName, mimeType: 'model/stl', buffer: stlBytes },
    { name: jpegName, mimeType: 'image/jpeg', buffer: jpegBytes },
  ]);
  const stl = await pendingItem(page, stlName);
  check((await stl.locator('select').first().inputValue()) === 'stl', 'STL not detected');
  await stl.locator('select').nth(1).selectOption('obj');
  await stl.getByLabel('Labels').fill('scenario=upload');
  const jpeg = await pendingItem(page, jpegName);
  check((await jpeg.locator('select').first().inputValue()) === 'jpeg', 'JPEG not detected');
  await jpeg.locator('select').nth(1).selectOption('jpeg');
  // The options form comes from the route's schema; a value it refuses is caught in the page.
  const quality = jpeg.getByLabel('Quality');
  await quality.fill('101');
  await jpeg.getByRole('button', { name: `Convert ${jpegName}` }).click();
  await jpeg.locator('.error', { hasText: 'quality' }).waitFor();
  await quality.fill('85');
  await jpeg.getByLabel('Variants').fill('64p,128p');
  await page.getByRole('button', { name: 'Convert all' }).click();
  stlId = await idOf(page, stlName);
  jpegId = await idOf(page, jpegName);
  await waitStatus(page, stlId, 'succeeded');
  await waitStatus(page, jpegId, 'succeeded');
  for (const id of [stlId, jpegId]) {
    const value = await item(page, id).locator('progress').evaluate((p) => p.value);
    check(value === 100, `progress of ${id} ended at ${value}`);
  }
  check((await page.locator('#pending li').count()) === 0, 'submitted files still pending');
});

await scenario('download-matches-api', async (page) => {
  check(stlId && jpegId, 'needs upload-stl-and-jpeg');
  await page.goto(BASE);
  await item(page, stlId).locator('.name').click();
  const dialog = page.locator('#detail');
  const link = dialog.locator('a.download', { hasText: 'output.obj' });
  await link.waitFor();
  const [download] = await Promise.all([page.waitForEvent('download'), link.click()]);
  const got = readFileSync(await download.path());
  const record = await apiJson(BASE, `/v1/conversions/${stlId}`);
  const art = record.artifacts.find((a) => a.name === 'output.obj');
  const viaApi = Buffer.from(await (await api(BASE, art.url)).arrayBuffer());
  check(got.equals(viaApi), `downloaded ${got.length} bytes differ from the API's ${viaApi.length}`);
  check(`sha256:${sha256(got)}` === art.checksum, 'checksum differs');
  const shown = await dialog.locator('tr', { hasText: 'output.obj' }).locator('.checksum').textContent();
  check(shown.trim() === art.checksum, `checksum shown: ${shown}`);
  // The mesh's 3D view draws.
  const canvas = dialog.locator('canvas.viewer');
  await canvas.waitFor();
  await dialog.locator('canvas.viewer[data-drawn]').waitFor();
  const before = await canvas.getAttribute('data-drawn');
  await canvas.focus();
  await page.keyboard.press('ArrowLeft');
  await dialog.locator(`canvas.viewer:not([data-drawn="${before}"])`).waitFor();
  await page.keyboard.press('Escape');
  await dialog.waitFor({ state: 'hidden' });
});

await scenario('previews', async (page) => {
  check(stlId && jpegId, 'needs upload-stl-and-jpeg');
  const record = await apiJson(BASE, `/v1/conversions/${stlId}`);
  check(record.artifacts.some((a) => a.name === 'preview.png'), 'the mesh conversion has no preview.png');
  await page.goto(BASE);
  const thumb = item(page, stlId).locator('.thumb img');
  check((await imageLoaded(thumb)) > 0, 'thumbnail empty');
  await item(page, stlId).locator('.name').click();
  check((await imageLoaded(page.locator('#detail img.preview'))) > 0, 'preview empty');
  await page.keyboard.press('Escape');
  await item(page, jpegId).locator('.name').click();
  const variants = page.locator('#detail .variants img');
  await variants.first().waitFor();
  check((await variants.count()) === 2, `variants shown: ${await variants.count()}`);
  const widths = [await imageLoaded(variants.nth(0)), await imageLoaded(variants.nth(1))];
  check(widths.every((w) => w > 0), `variant widths ${widths}`);
});

await scenario('corrupt-file-fails-with-its-reason', async (page) => {
  await page.goto(BASE);
  await page.locator('#formats-state', { hasText: 'stl' }).waitFor();
  const name = 'corrupt.stl';
  await pickFiles(page, [{ name, mimeType: 'model/stl', buffer: Buffer.from('solid broken\n  facet normal 0 0 1\n    outer loop\n      vertex 0 0 zero\n') }]);
  const p = await pendingItem(page, name);
  await p.locator('select').nth(1).selectOption('obj');
  await p.getByRole('button', { name: `Convert ${name}` }).click();
  const id = await idOf(page, name);
  await waitStatus(page, id, 'failed');
  const record = await apiJson(BASE, `/v1/conversions/${id}`);
  const shown = (await item(page, id).locator('.message').textContent()).trim();
  check(shown && shown === record.error.message, `shown ${JSON.stringify(shown)}, API ${JSON.stringify(record.error)}`);
  check(await item(page, id).getByRole('button', { name: `Resubmit ${name}` }).isVisible(), 'no resubmit');
  // A refused submission shows the problem's detail.
  await pickFiles(page, [{ name: 'empty.stl', mimeType: 'model/stl', buffer: Buffer.alloc(0) }]);
  const empty = await pendingItem(page, 'empty.stl');
  await empty.getByRole('button', { name: 'Convert empty.stl' }).click();
  await empty.locator('p.error').filter({ hasText: /empty/i }).waitFor();
});

await scenario('cancel-a-long-job', async (page) => {
  await page.goto(BASE);
  await page.locator('#formats-state', { hasText: 'stl' }).waitFor();
  const name = 'long.stl';
  await pickFiles(page, [{ name, mimeType: 'model/stl', buffer: stlBytes }]);
  const p = await pendingItem(page, name);
  await p.locator('select').nth(1).selectOption('step');
  await p.getByLabel('Duration ms').fill('60000');
  await p.getByRole('button', { name: `Convert ${name}` }).click();
  const id = await idOf(page, name);
  await waitStatus(page, id, 'running');
  // Live progress over the event stream: the stage text shows while it runs.
  await item(page, id).locator('.stage', { hasText: /%/ }).waitFor();
  await item(page, id).getByRole('button', { name: `Cancel ${name}` }).click();
  await waitStatus(page, id, 'cancelled');
  const record = await apiJson(BASE, `/v1/conversions/${id}`);
  check(record.status === 'cancelled', `API says ${record.status}`);
  // Delete it.
  page.once('dialog', (d) => d.accept());
  await item(page, id).getByRole('button', { name: `Delete ${name}` }).click();
  await item(page, id).waitFor({ state: 'detached' });
  const gone = await api(BASE, `/v1/conversions/${id}`);
  check(gone.status === 404, `after delete the API answers ${gone.status}`);
});

await scenario('page-through-120', async (page) => {
  const tiny = readFileSync(STL);
  const ids = [];
  const queue = Array.from({ length: 120 }, (_, i) => i);
  const worker = async () => {
    while (queue.length) {
      const i = queue.shift();
      const c = await submitViaApi(BASE, {
        name: `batch-${String(i).padStart(3, '0')}.stl`,
        bytes: tiny,
        target: 'ply',
        labels: 'batch=paging',
        options: { preview: false },
      });
      ids.push(c.id);
    }
  };
  await Promise.all([worker(), worker(), worker(), worker()]);
  // A fresh page: how long until the list shows 50 conversions.
  await page.goto(BASE);
  await page.locator('#list li.item').nth(49).waitFor();
  figures.ms_until_50_listed = Math.round(await page.evaluate(() => performance.now()));
  // Filter to the batch, scroll to the end.
  await page.getByLabel('Label (key=value)').fill('batch=paging');
  await page.getByRole('button', { name: 'Apply' }).click();
  await page.locator('#list li.item').first().waitFor();
  for (;;) {
    const count = await page.locator('#list li.item').count();
    const state = await page.locator('#list-state').textContent();
    if (count >= 120 && !/more below/.test(state)) break;
    await page.locator('#sentinel').scrollIntoViewIfNeeded();
    await page
      .locator('#list li.item')
      .nth(count)
      .or(page.locator('#list-state').filter({ hasNotText: 'more below' }))
      .first()
      .waitFor();
  }
  const shown = await page.locator('#list li.item').evaluateAll((els) => els.map((e) => e.dataset.id));
  check(shown.length === 120, `listed ${shown.length}`);
  check(new Set(shown).size === 120, 'duplicates in the list');
  check(shown.every((id) => ids.includes(id)), 'a conversion outside the batch');
  // Newest first: by creation time, then id (the API's default order), which concurrent
  // submits may make differ from the ids' own order.
  const listed = await apiJson(BASE, '/v1/conversions?label=batch%3Dpaging&limit=1000');
  const nanos = (t) => {
    const m = t.match(/^(.*?)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$/);
    return BigInt(Date.parse(m[1] + m[3])) * 1000000n + BigInt((m[2] || '').padEnd(9, '0'));
  };
  const newestFirst = listed.items.every((c, i, all) => {
    if (i === 0) return true;
    const [a, b] = [nanos(all[i - 1].created_at), nanos(c.created_at)];
    return a > b || (a === b && all[i - 1].id > c.id);
  });
  check(newestFirst, 'the API does not list newest first');
  check(shown.join() === listed.items.map((c) => c.id).join(), 'not in the API order (newest first)');
});

await scenario('sign-in-with-a-key', async (page, context) => {
  check(AUTH_BASE && API_KEY, 'AUTH_BASE_URL and API_KEY are needed');
  await page.goto(AUTH_BASE);
  const dialog = page.locator('#signin');
  await dialog.waitFor();
  await page.getByLabel('API key').fill('cvt_not_a_real_key');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#signin-error', { hasText: /key/i }).waitFor();
  await page.getByLabel('API key').fill(API_KEY);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await dialog.waitFor({ state: 'hidden' });
  await page.locator('#account-state', { hasText: 'Signed in' }).waitFor();
  await page.locator('#formats-state', { hasText: 'stl' }).waitFor();
  await pickFiles(page, [{ name: stlName, mimeType: 'model/stl', buffer: stlBytes }]);
  const p = await pendingItem(page, stlName);
  await p.locator('select').nth(1).selectOption('obj');
  await p.getByRole('button', { name: `Convert ${stlName}` }).click();
  const id = await idOf(page, stlName);
  await waitStatus(page, id, 'succeeded');
  // Only this tenant's conversions; the preview loads with the key.
  const listed = await apiJson(AUTH_BASE, '/v1/conversions', {}, API_KEY);
  check((await page.locator('#list li.item').count()) === listed.items.length, 'list differs from the tenant');
  check((await imageLoaded(item(page, id).locator('.thumb img'))) > 0, 'thumbnail with a key');
  // Kept for this tab only: a reload stays signed in, another tab asks again.
  check((await page.evaluate(() => localStorage.length)) === 0, 'something in localStorage');
  await page.reload();
  await item(page, id).waitFor();
  const other = await newPage(await browser.newContext());
  await other.goto(AUTH_BASE);
  await other.locator('#signin').waitFor();
  await other.context().close();
});

await scenario('phone-width-and-keyboard', async (page) => {
  await page.setViewportSize({ width: 375, height: 740 });
  await page.goto(BASE);
  await page.locator('#list li.item').first().waitFor();
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 1, `wider than the phone by ${overflow}px`);
  // The drop zone is reachable and announced; a list entry opens from the keyboard.
  await page.keyboard.press('Tab');
  await page.keyboard.press('Tab');
  const focused = await page.evaluate(() => document.activeElement?.id);
  check(focused === 'drop', `second Tab focused ${focused}`);
  await page.locator('#list li.item .name').first().focus();
  await page.keyboard.press('Enter');
  await page.locator('#detail').waitFor();
  await page.keyboard.press('Escape');
  await page.locator('#detail').waitFor({ state: 'hidden' });
});

await browser.close();
log('figures', JSON.stringify(figures));
if (failures.length) {
  log(`failed: ${failures.join(', ')}`);
  process.exit(1);
}
log('all scenarios passed');
