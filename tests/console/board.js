// Drives the console served by `herald serve` in Debian's Chromium with
// Playwright. Started by tests/it/console.rs, which runs `herald mock` and
// `herald serve` and passes where they are:
//   HERALD_URL, MOCK_URL, TOKEN_OPERATOR (all scopes), TOKEN_VIEWER (read),
//   SCREENSHOT_DIR (where the README's screenshots go), CHROMIUM (binary).
// Exits non-zero, naming the failed step, on any failure; prints one line
// per step passed.
'use strict';

const fs = require('fs');
const http = require('http');
const os = require('os');
const path = require('path');
const { chromium } = require('playwright-core');

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const HERALD_URL = env('HERALD_URL').replace(/\/$/, '');
const MOCK_URL = env('MOCK_URL').replace(/\/$/, '');
const TOKEN_OPERATOR = env('TOKEN_OPERATOR');
const TOKEN_VIEWER = env('TOKEN_VIEWER');
const SCREENSHOT_DIR = env('SCREENSHOT_DIR');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
/** How long one step may wait for the page to show something. */
const STEP_TIMEOUT_MS = 30000;

const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

let step = 'starting';
function passed(what) {
  console.log('ok - ' + what);
}

async function api(method, urlPath, token, body) {
  const response = await fetch(HERALD_URL + urlPath, {
    method,
    headers: Object.assign({ 'Content-Type': 'application/json' }, token ? { Authorization: 'Bearer ' + token } : {}),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

async function send(request) {
  const answer = await api('POST', '/v1/broadcasts', TOKEN_OPERATOR, request);
  if (answer.status !== 202) throw new Error('send: ' + answer.status + ' ' + JSON.stringify(answer.body));
  return answer.body;
}

async function setFaults(mockPath, faults) {
  const response = await fetch(MOCK_URL + '/_mock/faults', {
    method: 'PUT',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ path: mockPath, faults }),
  });
  if (response.status !== 204) throw new Error('mock faults: ' + response.status + ' ' + (await response.text()));
}

async function waitBroadcast(id, predicate, what) {
  const deadline = Date.now() + STEP_TIMEOUT_MS;
  for (;;) {
    const { body } = await api('GET', '/v1/broadcasts/' + id, TOKEN_OPERATOR);
    if (predicate(body)) return body;
    if (Date.now() > deadline) throw new Error('timed out waiting for ' + what + ': ' + JSON.stringify(body));
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** A reverse proxy that serves herald under /herald/, as a site might. */
function startPrefixProxy() {
  const target = new URL(HERALD_URL);
  const server = http.createServer((req, res) => {
    if (!req.url.startsWith('/herald/')) {
      res.writeHead(404);
      res.end('outside the prefix');
      return;
    }
    const upstream = http.request({
      host: target.hostname, port: target.port, method: req.method,
      path: req.url.slice('/herald'.length), headers: req.headers,
    }, (answer) => {
      res.writeHead(answer.statusCode, answer.headers);
      answer.pipe(res);
    });
    upstream.on('error', () => { res.writeHead(502); res.end(); });
    req.pipe(upstream);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

/** A tab of its own (sessionStorage, so the token, is per tab), with every
 * console error, warning and page error kept. */
async function openTab(context, errors, label) {
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  page.on('console', (message) => {
    if (message.type() === 'error' || message.type() === 'warning') {
      errors.push(`${label} console ${message.type()}: ${message.text()}`);
    }
  });
  page.on('pageerror', (error) => errors.push(`${label} page error: ${error.message}`));
  page.on('requestfailed', (request) => {
    // The event stream is cut when a tab closes; that is no error.
    if (!request.url().includes('/v1/events')) errors.push(`${label} request failed: ${request.url()} ${request.failure().errorText}`);
  });
  return page;
}

async function signIn(page, url, token) {
  await page.goto(url);
  await page.waitForSelector('#login:not([hidden])');
  await page.fill('#token-input', token);
  await page.press('#token-input', 'Enter');
  await page.waitForSelector('#live.on');
}

function chip(id, destination) {
  return `.board article.bc[data-id="${id}"] .chip[data-dest="${destination}"]`;
}

async function main() {
  fs.mkdirSync(SCREENSHOT_DIR, { recursive: true });
  const errors = [];
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-console-chromium-'));
  // A fresh profile for every run.
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM, headless: true, args: ARGS, viewport: { width: 1280, height: 900 },
  });
  const proxy = await startPrefixProxy();
  try {
    // An incident that came before, already converged.
    step = 'an earlier incident';
    const earlier = await send({ title: 'INC-41: search latency high', body: 'p99 above 2 s', severity: 'P2', thread: 'INC-41',
      destinations: ['slack', 'jira', 'status-page'] });
    await waitBroadcast(earlier.id, (b) => b.status === 'converged', 'INC-41 converged');

    step = 'load the board';
    const page = await openTab(context, errors, 'operator');
    await page.goto(HERALD_URL + '/');
    await page.evaluate(() => { window.__sameDocument = true; });
    await page.waitForSelector('#login:not([hidden])');
    await page.fill('#token-input', TOKEN_OPERATOR);
    await page.press('#token-input', 'Enter');
    await page.waitForSelector('#live.on');
    await page.waitForSelector(chip(earlier.id, 'jira') + '[data-state="confirmed"]');
    const who = await page.textContent('#who');
    if (!who.includes('operate')) throw new Error('who shows ' + who);
    passed('the board loads with the token entered once, showing the earlier incident');

    // The incident: the status page answers 503 until the fault clears; the
    // pager bridge fails three times (its policy allows three: dead).
    step = 'an incident with faults';
    await setFaults('/hooks/status-page', { fail_first: 100000, fail_status: 503 });
    await setFaults('/hooks/pager-bridge', { fail_first: 3, fail_status: 502 });
    await setFaults('/slack/api/chat.postMessage', { rate_limit_first: 1, retry_after_secs: 2 });
    const incident = await send({ title: 'INC-42: checkout database down', severity: 'P1', thread: 'INC-42',
      body: 'Primary checkout database is not accepting connections. Orders are failing.',
      destinations: ['slack', 'teams', 'jira', 'status-page', 'pager-bridge'] });
    const retrying = page.locator(chip(incident.id, 'status-page') + '[data-state="retrying"]');
    await retrying.waitFor();
    await page.waitForFunction((selector) => {
      const node = document.querySelector(selector);
      return node && /retrying \d+\/\d+ · next in \d+ s · HTTP 503/.test(node.textContent);
    }, chip(incident.id, 'status-page'));
    await page.waitForSelector(chip(incident.id, 'pager-bridge') + '[data-state="dead"]');
    await page.waitForSelector(chip(incident.id, 'jira') + '[data-state="confirmed"]');
    const status = await page.getAttribute(`.board article.bc[data-id="${incident.id}"]`, 'data-status');
    if (status !== 'delivering') throw new Error('the incident shows ' + status);
    const threadGroups = await page.$$eval('.board .thread', (nodes) => nodes.map((n) => n.dataset.thread));
    if (threadGroups[0] !== 'INC-42' || threadGroups[1] !== 'INC-41') throw new Error('groups, newest first: ' + threadGroups);
    await page.screenshot({ path: path.join(SCREENSHOT_DIR, 'board-incident.png'), fullPage: true });
    passed('the incident shows live: status-page ' + (await page.textContent(chip(incident.id, 'status-page'))).trim());

    step = 'retrying to confirmed when the fault clears';
    await setFaults('/hooks/status-page', {});
    await page.waitForSelector(chip(incident.id, 'status-page') + '[data-state="confirmed"]');
    if (!(await page.evaluate(() => window.__sameDocument === true))) throw new Error('the page was reloaded');
    passed('status-page went from retrying to confirmed live, without a reload');

    step = 'filters';
    await page.selectOption('#f-status', 'converged');
    await page.waitForSelector(`.board article.bc[data-id="${incident.id}"]`, { state: 'hidden' });
    await page.waitForSelector(`.board article.bc[data-id="${earlier.id}"]`, { state: 'visible' });
    await page.selectOption('#f-status', '');
    await page.selectOption('#f-severity', 'P2');
    await page.waitForSelector(`.board article.bc[data-id="${incident.id}"]`, { state: 'hidden' });
    await page.selectOption('#f-severity', '');
    await page.selectOption('#f-destination', 'pager-bridge');
    await page.waitForSelector(`.board article.bc[data-id="${earlier.id}"]`, { state: 'hidden' });
    await page.selectOption('#f-destination', '');
    await page.waitForSelector(`.board article.bc[data-id="${earlier.id}"]`, { state: 'visible' });
    passed('filters by status, severity and destination hide and show rows');

    // A token with the read scope only, through a path prefix: no retry
    // button, and the API refuses the retry.
    step = 'a read-only token behind a path prefix';
    const viewer = { page: await openTab(context, errors, 'viewer') };
    const prefixed = `http://127.0.0.1:${proxy.address().port}/herald/`;
    await signIn(viewer.page, prefixed, TOKEN_VIEWER);
    await viewer.page.goto(prefixed + '#b/' + incident.id);
    await viewer.page.waitForSelector('.delivery[data-dest="pager-bridge"] [data-state="dead"]');
    if (await viewer.page.$('[data-action="retry"]')) throw new Error('a read-only token sees a retry button');
    if (await viewer.page.$('[data-action="cancel"]')) throw new Error('a read-only token sees a cancel button');
    const refused = await api('POST', `/v1/broadcasts/${incident.id}/retry`, TOKEN_VIEWER, { destinations: ['pager-bridge'] });
    if (refused.status !== 403) throw new Error('the API answered a read-only retry with ' + refused.status);
    passed('a read-only token (behind /herald/) shows no retry button and the API answers 403');

    step = 'retry a dead delivery';
    await page.click(`.board article.bc[data-id="${incident.id}"] a.title`);
    const retry = page.locator('.delivery[data-dest="pager-bridge"] button[data-action="retry"]');
    await retry.waitFor();
    await retry.focus();
    await page.keyboard.press('Enter');
    await page.waitForSelector('.delivery[data-dest="pager-bridge"] [data-role="delivery-state"][data-state="confirmed"]');
    await page.waitForSelector('[data-role="detail-status"]:text("converged")');
    await page.waitForFunction(() => document.querySelectorAll('.timeline rect').length >= 8);
    const outcomes = await page.$$eval('.timeline rect', (rects) => rects.map((r) => r.dataset.outcome));
    for (const expected of ['success', 'retryable', 'rate_limited']) {
      if (!outcomes.includes(expected)) throw new Error('the timeline has no ' + expected + ' attempt: ' + outcomes);
    }
    const ref = await page.textContent('.delivery[data-dest="jira"] dd');
    if (!/^[A-Z]+-\d+$/.test(ref.trim())) throw new Error('jira remote_ref: ' + ref);
    // The issue key is a link to the issue, opened apart from the console.
    const link = await page.$eval('.delivery[data-dest="jira"] dd a', (a) => ({ href: a.getAttribute('href'), rel: a.rel, target: a.target }));
    if (link.href !== MOCK_URL + '/jira/browse/' + ref.trim() || link.rel !== 'noopener noreferrer' || link.target !== '_blank') {
      throw new Error('jira link: ' + JSON.stringify(link));
    }
    // The message as each destination received it: Slack's request body,
    // indented, with the incident's title in it; one section a destination.
    const slackBody = page.locator('details.received[data-dest="slack"] pre.request');
    await slackBody.waitFor();
    const slackText = await slackBody.textContent();
    const slackJson = JSON.parse(slackText);
    if (!slackText.includes('\n  "') || !JSON.stringify(slackJson).includes('INC-42: checkout database down')) {
      throw new Error('the Slack body shown: ' + slackText);
    }
    const receivedBy = await page.$$eval('details.received', (nodes) => nodes.map((n) => n.dataset.dest));
    if (receivedBy.join() !== 'slack,teams,jira,status-page,pager-bridge') throw new Error('received sections: ' + receivedBy);
    await page.screenshot({ path: path.join(SCREENSHOT_DIR, 'broadcast-timeline.png'), fullPage: true });
    // The viewer's board followed the retry too.
    await viewer.page.waitForSelector('.delivery[data-dest="pager-bridge"] [data-state="confirmed"]');
    passed('retry (pressed from the keyboard) took pager-bridge from dead to confirmed; timeline has ' + outcomes.length +
      ' attempts; the detail links the Jira issue and shows each destination\'s request (Slack\'s has the title)');

    step = 'destinations, pause and resume';
    await page.click('nav a[href="#destinations"]');
    await page.waitForSelector('#dest-body tr[data-dest="status-page"]');
    await page.click('button[aria-label="Pause status-page"]');
    await page.fill('tr[data-dest="status-page"] input[name="reason"]', 'maintenance window');
    await page.press('tr[data-dest="status-page"] input[name="reason"]', 'Enter');
    await page.waitForSelector('tr[data-dest="status-page"] button[aria-label="Resume status-page"]');
    const pausedRow = await page.textContent('tr[data-dest="status-page"]');
    if (!pausedRow.includes('maintenance window')) throw new Error('paused row: ' + pausedRow);
    await page.click('button[aria-label="Resume status-page"]');
    await page.waitForSelector('tr[data-dest="status-page"] button[aria-label="Pause status-page"]');
    passed('the destinations page pauses and resumes a destination');

    step = 'send from the form';
    await page.click('nav a[href="#send"]');
    await page.fill('#s-thread', 'INC-43');
    await page.selectOption('#s-severity', 'P2');
    await page.check('#s-destinations input[value="slack"]');
    await page.check('#s-destinations input[value="jira"]');
    await page.fill('#s-title', 'INC-43: payment provider errors');
    await page.fill('#s-body', 'Card payments fail for 3 % of orders.');
    await page.click('#s-submit');
    await page.waitForSelector('#send-result .status:text("converged")');
    const sentChips = await page.$$eval('#send-result .chip', (nodes) => nodes.map((n) => n.dataset.state));
    if (sentChips.join() !== 'confirmed,confirmed') throw new Error('sent: ' + sentChips);
    // A refused send names the field and changes nothing.
    await page.fill('#s-title', 'no destination');
    await page.uncheck('#s-destinations input[value="slack"]');
    await page.uncheck('#s-destinations input[value="jira"]');
    await page.click('#s-submit');
    await page.waitForSelector('#send-error:text("destinations")');
    await page.click('nav a[href="#board"]');
    await page.waitForSelector('.board .thread[data-thread="INC-43"]');
    passed('the send form sent INC-43 and showed it converge; a bad send names the field');

    step = 'narrow screen and keyboard';
    await page.setViewportSize({ width: 390, height: 844 });
    await page.waitForTimeout(100);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    if (overflow > 0) throw new Error('the board is ' + overflow + ' px wider than a 390 px screen');
    await page.screenshot({ path: path.join(SCREENSHOT_DIR, 'board-390px.png'), fullPage: false });
    await page.focus('nav a[href="#board"]');
    const reached = [];
    for (let i = 0; i < 2; i++) {
      await page.keyboard.press('Tab');
      reached.push(await page.evaluate(() => document.activeElement && document.activeElement.textContent));
    }
    if (reached.join() !== 'Destinations,Send') throw new Error('Tab from Board reached ' + reached);
    passed('no horizontal scrolling at 390 px; the navigation is reachable with Tab');

    // A board of 1,000 broadcasts: built in slices, then one new
    // broadcast's chips change without rebuilding the rest. Figures are
    // printed, not asserted (timings belong in benchmarks).
    step = '1,000 broadcasts';
    await page.setViewportSize({ width: 1280, height: 900 });
    const already = await page.$$eval('.board article.bc', (rows) => rows.length);
    const load = [];
    for (let i = already; i < 1000; i++) {
      load.push({ title: 'load ' + i, severity: 'P4', thread: 'LOAD-' + (i % 250), destinations: ['status-page'] });
    }
    for (let i = 0; i < load.length; i += 25) await Promise.all(load.slice(i, i + 25).map(send));
    const settleDeadline = Date.now() + 120000;
    for (;;) {
      const { body } = await api('GET', '/v1/broadcasts?status=delivering&limit=1', TOKEN_OPERATOR);
      if (!body.broadcasts.length) break;
      if (Date.now() > settleDeadline) throw new Error('the 1,000 broadcasts did not converge in 120 s');
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    const big = await openTab(context, errors, 'big board');
    await big.addInitScript(() => {
      window.__longTasks = [];
      new PerformanceObserver((list) => { for (const e of list.getEntries()) window.__longTasks.push(e.duration); })
        .observe({ type: 'longtask', buffered: true });
    });
    await big.goto(HERALD_URL + '/');
    await big.waitForSelector('#login:not([hidden])');
    await big.fill('#token-input', TOKEN_OPERATOR);
    // Measured from sign-in on: the page's own load is not the board's.
    await big.evaluate(() => { window.__longTasks = []; });
    const loadStarted = Date.now();
    await big.press('#token-input', 'Enter');
    await big.waitForFunction(() => document.querySelectorAll('.board article.bc').length >= 1000, null, { timeout: 60000 });
    const builtMs = Date.now() - loadStarted;
    const buildTasks = await big.evaluate(() => window.__longTasks);
    const marker = await big.evaluate(() => {
      const row = document.querySelector('.board article.bc:last-of-type');
      row.__kept = true;
      return row.dataset.id;
    });
    const sentAt = Date.now();
    const fresh = await send({ title: 'one more', severity: 'P3', thread: 'LOAD-0', destinations: ['status-page', 'jira'] });
    await big.waitForSelector(`article.bc[data-id="${fresh.id}"][data-status="converged"]`);
    const liveMs = Date.now() - sentAt;
    const kept = await big.evaluate((id) => document.querySelector(`article.bc[data-id="${id}"]`).__kept === true, marker);
    if (!kept) throw new Error('an event rebuilt rows it did not change');
    passed(`1,000 broadcasts: board built in ${builtMs} ms after sign-in, longest main-thread task ` +
      `${Math.round(Math.max(0, ...buildTasks))} ms (${buildTasks.length} over 50 ms); a new broadcast converged on it ` +
      `${liveMs} ms after it was sent, other rows untouched`);

    // About 10 events a second for 10 s on that board: a broadcast every
    // 200 ms (each makes an event when accepted and one when confirmed),
    // counted on a stream of our own.
    step = '10 events a second on the board of 1,000';
    const STREAM_MS = 10000;
    const counter = new AbortController();
    let events = 0;
    const counting = (async () => {
      const response = await fetch(HERALD_URL + '/v1/events', { headers: { Authorization: 'Bearer ' + TOKEN_OPERATOR }, signal: counter.signal });
      const decoder = new TextDecoder();
      for await (const chunk of response.body) events += (decoder.decode(chunk, { stream: true }).match(/^event: delivery$/gm) || []).length;
    })().catch((error) => { if (!counter.signal.aborted) throw error; });
    await big.evaluate(() => { window.__longTasks = []; });
    const streamStarted = Date.now();
    const streamed = [];
    for (let i = 0; Date.now() - streamStarted < STREAM_MS; i++) {
      streamed.push(send({ title: 'stream ' + i, severity: 'P4', thread: 'LOAD-' + (i % 250), destinations: ['status-page'] }));
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    const last = (await Promise.all(streamed)).pop();
    await big.waitForSelector(`article.bc[data-id="${last.id}"][data-status="converged"]`);
    const streamMs = Date.now() - streamStarted;
    const streamTasks = await big.evaluate(() => window.__longTasks);
    counter.abort();
    await counting;
    await big.close();
    passed(`${events} delivery events in ${(streamMs / 1000).toFixed(1)} s (${(events * 1000 / streamMs).toFixed(1)} a second) on the board of ` +
      `1,000: longest main-thread task ${Math.round(Math.max(0, ...streamTasks))} ms (${streamTasks.length} over 50 ms); ` +
      `the last of ${streamed.length} broadcasts showed converged`);

    step = 'no errors in the browser console';
    await viewer.page.close();
    await page.close();
    if (errors.length) throw new Error(errors.join('\n'));
    passed('no errors or warnings in the browser console');
  } finally {
    proxy.close();
    await context.close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
}

main().then(() => process.exit(0), (error) => {
  console.error(`not ok - ${step}: ${error && error.stack ? error.stack : error}`);
  process.exit(1);
});
