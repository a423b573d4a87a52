// herald console: a client of herald's HTTP API, served by herald itself.
// Plain script, no framework, no build step. Every URL is relative to the
// page, so herald may sit behind a path prefix. The token lives in this
// tab's sessionStorage and travels as `Authorization: Bearer`; no cookies.
'use strict';

(function () {
  /** Broadcasts the board holds at most (newest first). */
  const BOARD_BROADCASTS_MAX = 1000;
  /** Broadcasts per page when loading the board (the API's largest page). */
  const PAGE_SIZE = 200;
  /** Script time one animation frame spends building the board's rows:
   * the frame's layout and paint come on top, so a slower machine stays
   * responsive too. */
  const BUILD_SLICE_BUDGET_MS = 6;
  /** Previews (the rendered requests of a broadcast) kept for the detail. */
  const PREVIEWS_KEPT_MAX = 20;
  /** How often destination health is read again, on its page and elsewhere. */
  const DESTINATIONS_REFRESH_MS_ON_PAGE = 3000;
  const DESTINATIONS_REFRESH_MS = 10000;
  /** Wait before reconnecting a lost event stream. */
  const RECONNECT_MS = 2000;
  /** Longest error text shown on a chip (the whole text is its tooltip). */
  const CHIP_ERROR_CHARS_MAX = 48;
  const TOKEN_KEY = 'herald.token';
  const FINAL = new Set(['confirmed', 'failed', 'dead', 'cancelled']);
  const OUTCOMES = ['success', 'retryable', 'rate_limited', 'ambiguous', 'permanent'];

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY) || '',
    me: null,
    destinations: new Map(),
    broadcasts: new Map(),
    /** thread key -> { el, list, ids: broadcast ids oldest first } */
    groups: new Map(),
    /** broadcast id -> its row element on the board */
    rows: new Map(),
    loading: false,
    /** ids with events while their snapshot was being read */
    dirty: new Set(),
    fetching: new Map(),
    renderQueue: new Set(),
    /** new broadcasts whose rows are placed at the next frame */
    placeQueue: new Set(),
    renderScheduled: false,
    /** bumped by each build of the board: an older build's slices stop */
    buildGeneration: 0,
    /** broadcast id -> { answer, error } of GET .../preview */
    previews: new Map(),
    detailId: null,
    sendWatchId: null,
    streamAbort: null,
    started: false,
  };

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === 'class') node.className = value;
      else if (key === 'text') node.textContent = value;
      else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  const SVG_NS = 'http://www.w3.org/2000/svg';
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === 'text') node.textContent = value;
      else node.setAttribute(key, String(value));
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }

  // ---- API -------------------------------------------------------------

  class ApiFailure extends Error {
    constructor(status, body) {
      const detail = (body && body.error) || {};
      super(detail.message || ('HTTP ' + status));
      this.status = status;
      this.code = detail.code || '';
      this.field = detail.field || null;
    }
  }

  function authHeaders(extra) {
    const headers = Object.assign({}, extra || {});
    if (state.token) headers.Authorization = 'Bearer ' + state.token;
    return headers;
  }

  async function api(method, path, body, extraHeaders) {
    const init = { method, headers: authHeaders(extraHeaders), cache: 'no-store' };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers['Content-Type'] = 'application/json';
    }
    const response = await fetch(path, init);
    let parsed = null;
    const text = await response.text();
    if (text) {
      try { parsed = JSON.parse(text); } catch (_) { parsed = null; }
    }
    if (!response.ok) {
      const failure = new ApiFailure(response.status, parsed);
      if (response.status === 401 && state.started) signOut('The token was refused: ' + failure.message);
      throw failure;
    }
    return parsed;
  }

  function can(scope) {
    return !!state.me && state.me.scopes.includes(scope);
  }

  function randomKey() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return 'console-' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  // ---- Words -----------------------------------------------------------

  function clock(ms) {
    const d = new Date(ms);
    const pad = (n) => String(n).padStart(2, '0');
    return pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds());
  }

  /** Today's local midnight and the next one, found again once a day
   * passes (a board of 1,000 rows asks for each row). */
  const today = { startMs: 0, endMs: 0 };
  function when(ms) {
    const now = Date.now();
    if (now >= today.endMs || now < today.startMs) {
      const midnight = new Date(now);
      midnight.setHours(0, 0, 0, 0);
      today.startMs = midnight.getTime();
      midnight.setDate(midnight.getDate() + 1);
      today.endMs = midnight.getTime();
    }
    if (ms >= today.startMs && ms < today.endMs) return clock(ms);
    return new Date(ms).toISOString().slice(0, 10) + ' ' + clock(ms);
  }

  function ago(ms) {
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.round(s / 60) + ' min ago';
    if (s < 86400) return Math.round(s / 3600) + ' h ago';
    return Math.round(s / 86400) + ' d ago';
  }

  function truncate(text, max) {
    return text.length > max ? text.slice(0, max - 1) + '…' : text;
  }

  function deriveStatus(deliveries) {
    let allConfirmed = true;
    for (const d of deliveries) {
      if (!FINAL.has(d.state)) return 'delivering';
      if (d.state !== 'confirmed') allConfirmed = false;
    }
    return allConfirmed ? 'converged' : 'partial';
  }

  function statusClass(status) {
    return { converged: 's-ok', partial: 's-bad', delivering: 's-info' }[status] || 's-mute';
  }

  function stateClass(d, paused) {
    if (d.state === 'confirmed') return d.possible_duplicate ? 's-warn' : 's-ok';
    if (d.state === 'failed' || d.state === 'dead') return 's-bad';
    if (d.state === 'cancelled' || d.state === 'pending') return 's-mute';
    if (paused || d.state === 'retrying' || d.state === 'verifying' || d.state === 'waiting') return 's-warn';
    return 's-info';
  }

  /** Why the last attempt failed, briefly: "HTTP 503" or the error's text. */
  function reason(d) {
    if (d.last_http_status && (d.last_http_status < 200 || d.last_http_status >= 300)) {
      return 'HTTP ' + d.last_http_status;
    }
    if (d.last_error) return truncate(d.last_error, CHIP_ERROR_CHARS_MAX);
    return '';
  }

  /** The destination's pause in words, or '' when it is not paused. */
  function pauseWords(name) {
    const h = state.destinations.get(name);
    if (!h) return '';
    if (h.pause) {
      return 'paused by ' + h.pause.paused_by + (h.pause.until ? ' until ' + clock(Date.parse(h.pause.until)) : ' until resumed');
    }
    if (h.paused_until && Date.parse(h.paused_until) > Date.now()) {
      return 'paused by 429 until ' + clock(Date.parse(h.paused_until));
    }
    if (h.circuit === 'open') return 'circuit open';
    return '';
  }

  /** "waiting for INC-42 #1": the earlier update of the thread it waits for. */
  function waitingWords(b, d) {
    const group = b.thread ? state.groups.get(threadKey(b)) : null;
    if (group) {
      for (let i = 0; i < group.ids.length; i++) {
        const earlier = state.broadcasts.get(group.ids[i]);
        if (!earlier || earlier.id === b.id) break;
        const other = earlier.deliveries.find((x) => x.destination === d.destination);
        if (other && !FINAL.has(other.state)) return 'waiting for ' + b.thread + ' #' + (i + 1);
      }
    }
    return 'waiting for an earlier update';
  }

  /** A delivery's exact state as the chip shows it. */
  function chipWords(b, d) {
    const parts = [];
    const paused = FINAL.has(d.state) ? '' : pauseWords(d.destination);
    switch (d.state) {
      case 'retrying': {
        parts.push(paused || 'retrying ' + d.attempts_made + '/' + d.attempts_max);
        if (!paused && d.dueAt) parts.push('next in ' + Math.max(0, Math.ceil((d.dueAt - Date.now()) / 1000)) + ' s');
        const why = reason(d);
        if (why) parts.push(why);
        break;
      }
      case 'sending':
      case 'verifying':
        parts.push(d.state + ' ' + d.attempts_made + '/' + d.attempts_max);
        break;
      case 'waiting':
        parts.push(waitingWords(b, d));
        break;
      case 'failed':
      case 'dead': {
        parts.push(d.state + ' ' + d.attempts_made + '/' + d.attempts_max);
        const why = reason(d);
        if (why) parts.push(why);
        break;
      }
      case 'pending':
        parts.push(paused || 'pending');
        break;
      default:
        parts.push(d.state);
    }
    if (d.possible_duplicate) parts.push('possible duplicate');
    return { words: parts.join(' · '), paused: !!paused };
  }

  // ---- Board model -----------------------------------------------------

  function threadKey(b) {
    return b.thread ? 't:' + b.thread : 'b:' + b.id;
  }

  /** A broadcast read whole (GET /v1/broadcasts/{id}: body, attempts),
   * not a line of the board's summary list. */
  function isWhole(b) {
    return typeof b.body === 'string';
  }

  function prepare(b) {
    b.createdMs = Date.parse(b.created_at);
    const now = Date.now();
    for (const d of b.deliveries) {
      d.dueAt = d.next_attempt_in_ms === null || d.next_attempt_in_ms === undefined ? null : now + d.next_attempt_in_ms;
      if (FINAL.has(d.state) && d.updated_at) d.finalAt = Date.parse(d.updated_at);
    }
    b.status = deriveStatus(b.deliveries);
    return b;
  }

  /** Puts a whole broadcast (as read from the API) on the board. */
  function upsert(b) {
    prepare(b);
    const known = state.broadcasts.get(b.id);
    state.broadcasts.set(b.id, b);
    if (!known) {
      const key = threadKey(b);
      let group = state.groups.get(key);
      if (!group) {
        group = { key, ids: [], el: null, list: null, newest: 0 };
        state.groups.set(key, group);
      }
      let at = group.ids.length;
      while (at > 0 && state.broadcasts.get(group.ids[at - 1]).createdMs > b.createdMs) at--;
      group.ids.splice(at, 0, b.id);
      group.newest = Math.max(group.newest, b.createdMs);
      if (state.started && !state.loading) state.placeQueue.add(b.id);
    }
    queueRender(b.id);
    // Waiting chips of later updates name this one.
    if (b.thread) for (const id of state.groups.get(threadKey(b)).ids) queueRender(id);
  }

  function applyEvent(e) {
    const b = state.broadcasts.get(e.broadcast_id);
    if (state.loading || state.fetching.has(e.broadcast_id)) {
      state.dirty.add(e.broadcast_id);
      if (!state.loading && b) applyToDelivery(b, e);
      return;
    }
    if (!b) {
      refetch(e.broadcast_id);
      return;
    }
    applyToDelivery(b, e);
    if (e.last_http_status === 429) refreshDestinationsSoon();
  }

  function applyToDelivery(b, e) {
    const d = b.deliveries.find((x) => x.destination === e.destination);
    if (!d) {
      refetch(b.id);
      return;
    }
    for (const field of ['state', 'summary', 'attempts_made', 'attempts_max', 'last_error', 'last_http_status', 'possible_duplicate']) {
      d[field] = e[field];
    }
    d.dueAt = e.next_attempt_in_ms === null || e.next_attempt_in_ms === undefined ? null : Date.now() + e.next_attempt_in_ms;
    b.status = deriveStatus(b.deliveries);
    queueRender(b.id);
    if (b.thread) for (const id of state.groups.get(threadKey(b)).ids) if (id !== b.id) queueRender(id);
    if (FINAL.has(d.state)) d.finalAt = Date.parse(e.at);
    // Attempts and remote_ref come with a read of the broadcast: only for
    // the one on screen, so a busy board costs no read per event.
    if (state.detailId === b.id || state.sendWatchId === b.id) refetchSoon(b.id);
  }

  const refetchTimers = new Map();
  /** Reads a broadcast again shortly (its attempts, remote_ref), once per burst. */
  function refetchSoon(id) {
    if (refetchTimers.has(id)) return;
    refetchTimers.set(id, setTimeout(() => { refetchTimers.delete(id); refetch(id); }, 250));
  }

  async function refetch(id) {
    if (state.fetching.has(id)) {
      state.dirty.add(id);
      return;
    }
    const job = api('GET', 'v1/broadcasts/' + encodeURIComponent(id));
    state.fetching.set(id, job);
    state.dirty.delete(id);
    try {
      upsert(await job);
    } catch (err) {
      if (!(err instanceof ApiFailure)) reportQuietly(err);
    } finally {
      state.fetching.delete(id);
    }
    // Events came in while it was read: read it again, they may be newer.
    if (state.dirty.has(id)) refetch(id);
  }

  function reportQuietly(err) {
    const live = $('live');
    live.textContent = 'offline';
    live.className = 'live off';
    live.title = String(err && err.message ? err.message : err);
  }

  async function loadBoard() {
    state.loading = true;
    state.dirty.clear();
    const fresh = [];
    let cursor = null;
    try {
      while (fresh.length < BOARD_BROADCASTS_MAX) {
        const limit = Math.min(PAGE_SIZE, BOARD_BROADCASTS_MAX - fresh.length);
        // The summary view: each delivery's state, no bodies nor attempts
        // (the detail reads those for the one broadcast it shows).
        const page = await api('GET', 'v1/broadcasts?view=summary&limit=' + limit + (cursor ? '&cursor=' + encodeURIComponent(cursor) : ''));
        fresh.push(...page.broadcasts);
        cursor = page.next_cursor;
        if (!cursor) break;
      }
    } finally {
      state.loading = false;
    }
    state.broadcasts.clear();
    state.groups.clear();
    state.rows.clear();
    state.renderQueue.clear();
    state.placeQueue.clear();
    state.loading = true; // upsert without placing rows; they are built below
    for (const b of fresh) upsert(b);
    state.loading = false;
    state.renderQueue.clear(); // the rows are built fresh from these states
    buildBoard();
    const dirty = Array.from(state.dirty);
    state.dirty.clear();
    for (const id of dirty) refetch(id);
    renderSendWatch();
    if (state.detailId) renderDetail();
  }

  // ---- Board view ------------------------------------------------------

  function groupsNewestFirst() {
    return Array.from(state.groups.values()).sort((a, b) => b.newest - a.newest);
  }

  /** A thread's section, without its rows yet. */
  function groupShell(group) {
    const sample = state.broadcasts.get(group.ids[0]);
    group.list = el('div', { class: 'list' });
    group.el = el('section', { class: 'thread', 'data-thread': sample.thread || '' },
      sample.thread ? el('h2', {}, el('span', { text: 'Thread ' + sample.thread }), el('span', { class: 'meta', 'data-role': 'count' })) : null,
      group.list);
    return group.el;
  }

  /** A thread's section with all its rows, newest first. */
  function groupElement(group) {
    groupShell(group);
    for (let i = group.ids.length - 1; i >= 0; i--) {
      group.list.append(rowElement(state.broadcasts.get(group.ids[i])));
    }
    updateGroupVisibility(group);
    return group.el;
  }

  /** Builds the board in slices of at most BUILD_SLICE_BUDGET_MS of script,
   * one per animation frame, row by row (a thread of hundreds is cut too),
   * so 1,000 broadcasts never block the page. */
  function buildBoard() {
    const board = $('board');
    board.textContent = '';
    const groups = groupsNewestFirst();
    const generation = ++state.buildGeneration;
    let next = 0;
    /** Index in groups[next].ids of the next row to build, counting down; -1: not started. */
    let row = -1;
    const slice = () => {
      if (generation !== state.buildGeneration) return;
      const started = performance.now();
      const fragment = document.createDocumentFragment();
      while (next < groups.length && performance.now() - started < BUILD_SLICE_BUDGET_MS) {
        const group = groups[next];
        if (row < 0) {
          // Placed whole by a live event since the build began.
          if (group.el) { next++; continue; }
          fragment.append(groupShell(group));
          row = group.ids.length - 1;
        }
        const id = group.ids[row];
        if (!state.rows.has(id)) group.list.append(rowElement(state.broadcasts.get(id)));
        row--;
        if (row < 0) {
          updateGroupVisibility(group);
          next++;
        }
      }
      board.append(fragment);
      if (next < groups.length) requestAnimationFrame(slice);
      else updateCounts();
    };
    slice();
  }

  /** Adds a new broadcast's row where it belongs, without touching the rest. */
  function placeRow(group, b) {
    const board = $('board');
    if (!group.el) {
      groupElement(group);
      board.prepend(group.el);
    } else {
      const row = rowElement(b);
      const index = group.ids.indexOf(b.id);
      const newer = group.ids[index + 1];
      const before = newer ? state.rows.get(newer) : null;
      if (before && before.nextSibling) group.list.insertBefore(row, before.nextSibling);
      else if (before) group.list.append(row);
      else group.list.prepend(row);
      if (board.firstElementChild !== group.el && group.newest === b.createdMs) board.prepend(group.el);
    }
    updateGroupVisibility(group);
  }

  function rowElement(b) {
    const row = el('article', { class: 'bc', 'data-id': b.id },
      el('div', { class: 'head' },
        el('span', { class: 'sev ' + b.severity, text: b.severity }),
        el('a', { class: 'title', href: '#b/' + b.id, text: b.title }),
        el('span', { class: 'status', 'data-role': 'status' }),
        el('span', { class: 'meta', text: (b.resolved ? 'resolve · ' : '') + when(b.createdMs) + ' · ' + b.id.slice(-8) })),
      el('div', { class: 'chips', 'data-role': 'chips' }));
    state.rows.set(b.id, row);
    fillRow(row, b);
    row.hidden = !matches(b);
    return row;
  }

  function fillRow(row, b) {
    const status = row.querySelector('[data-role=status]');
    status.textContent = b.status;
    status.className = 'status ' + statusClass(b.status);
    row.dataset.status = b.status;
    const chips = row.querySelector('[data-role=chips]');
    // The row's chips by destination, kept on the row: no selector per chip.
    const byDestination = row.chipsByDestination || (row.chipsByDestination = new Map());
    const seen = new Set();
    for (const d of b.deliveries) {
      seen.add(d.destination);
      let chip = byDestination.get(d.destination);
      if (!chip) {
        chip = el('span', { class: 'chip', 'data-dest': d.destination }, el('b', { text: d.destination }), el('span'));
        byDestination.set(d.destination, chip);
        chips.append(chip);
      }
      const { words, paused } = chipWords(b, d);
      chip.lastChild.textContent = ' ' + words;
      chip.className = 'chip ' + stateClass(d, paused);
      chip.dataset.state = d.state;
      chip.title = d.destination + ': ' + words + (d.last_error ? '\n' + d.last_error : '');
    }
    for (const [name, chip] of byDestination) {
      if (!seen.has(name)) {
        chip.remove();
        byDestination.delete(name);
      }
    }
  }

  function queueRender(id) {
    state.renderQueue.add(id);
    scheduleFlush();
  }

  function scheduleFlush() {
    if (state.renderScheduled) return;
    state.renderScheduled = true;
    requestAnimationFrame(flushRender);
  }

  /** Every change since the last frame, drawn at once: new rows placed,
   * changed rows filled. Events only change the model and queue their ids. */
  function flushRender() {
    state.renderScheduled = false;
    for (const id of state.placeQueue) {
      const b = state.broadcasts.get(id);
      const group = b && state.groups.get(threadKey(b));
      if (group && !state.rows.has(id)) placeRow(group, b);
    }
    state.placeQueue.clear();
    const ids = Array.from(state.renderQueue);
    state.renderQueue.clear();
    const touched = new Set();
    for (const id of ids) {
      const b = state.broadcasts.get(id);
      const row = state.rows.get(id);
      if (!b || !row) continue;
      fillRow(row, b);
      row.hidden = !matches(b);
      touched.add(state.groups.get(threadKey(b)));
    }
    for (const group of touched) updateGroupVisibility(group);
    if (ids.length) updateCounts();
    if (state.sendWatchId && ids.includes(state.sendWatchId)) renderSendWatch();
    if (state.detailId && ids.includes(state.detailId)) renderDetailChips();
  }

  /** Retrying chips count down to their next attempt. */
  function tick() {
    for (const b of state.broadcasts.values()) {
      if (b.status !== 'delivering') continue;
      if (b.deliveries.some((d) => d.state === 'retrying' || d.state === 'pending')) queueRender(b.id);
    }
  }

  // ---- Filters ---------------------------------------------------------

  function filters() {
    return {
      status: $('f-status').value,
      destination: $('f-destination').value,
      severity: $('f-severity').value,
      sinceMs: $('f-since').value ? Date.now() - Number($('f-since').value) : 0,
      thread: $('f-thread').value.trim().toLowerCase(),
    };
  }

  let currentFilters = null;
  function matches(b) {
    const f = currentFilters || (currentFilters = filters());
    if (f.status && b.status !== f.status) return false;
    if (f.severity && b.severity !== f.severity) return false;
    if (f.destination && !b.deliveries.some((d) => d.destination === f.destination)) return false;
    if (f.sinceMs && b.createdMs < f.sinceMs) return false;
    if (f.thread && !(b.thread || '').toLowerCase().includes(f.thread)) return false;
    return true;
  }

  function applyFilters() {
    currentFilters = filters();
    for (const [id, row] of state.rows) {
      const b = state.broadcasts.get(id);
      if (b) row.hidden = !matches(b);
    }
    for (const group of state.groups.values()) updateGroupVisibility(group);
    updateCounts();
  }

  function updateGroupVisibility(group) {
    if (!group || !group.el) return;
    let visible = 0;
    for (const id of group.ids) {
      const row = state.rows.get(id);
      if (row && !row.hidden) visible++;
    }
    group.el.hidden = visible === 0;
    const count = group.el.querySelector('[data-role=count]');
    if (count) count.textContent = group.ids.length + (group.ids.length === 1 ? ' broadcast' : ' broadcasts');
  }

  let countsScheduled = false;
  function updateCounts() {
    if (countsScheduled) return;
    countsScheduled = true;
    setTimeout(() => {
      countsScheduled = false;
      const tally = { delivering: 0, partial: 0, converged: 0 };
      let shown = 0;
      for (const b of state.broadcasts.values()) {
        tally[b.status]++;
        const row = state.rows.get(b.id);
        if (row && !row.hidden) shown++;
      }
      $('board-counts').textContent = shown + ' of ' + state.broadcasts.size + ' broadcasts shown · ' +
        tally.delivering + ' delivering · ' + tally.partial + ' partial · ' + tally.converged + ' converged';
      $('board-empty').hidden = shown !== 0;
    }, 100);
  }

  // ---- Event stream ------------------------------------------------------

  function setLive(on, words) {
    const live = $('live');
    live.textContent = words || (on ? 'live' : 'reconnecting…');
    live.className = 'live ' + (on ? 'on' : 'off');
    live.title = on ? 'Updates arrive from the event stream' : 'The event stream is down; reconnecting';
  }

  function handleSse(raw) {
    let event = 'message';
    let data = '';
    for (const line of raw.split('\n')) {
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'event') event = value;
      else if (field === 'data') data += (data ? '\n' : '') + value;
    }
    if (event === 'delivery' && data) applyEvent(JSON.parse(data));
    else if (event === 'lagged') loadBoard().catch(reportQuietly);
    else if (event === 'shutdown') setLive(false, 'herald stopping');
  }

  async function streamEvents() {
    let first = true;
    for (;;) {
      const abort = new AbortController();
      state.streamAbort = abort;
      try {
        const response = await fetch('v1/events', { headers: authHeaders(), cache: 'no-store', signal: abort.signal });
        if (response.status === 401) {
          signOut('The token was refused.');
          return;
        }
        if (!response.ok || !response.body) throw new Error('event stream: HTTP ' + response.status);
        setLive(true);
        // Subscribed first, read second: nothing between the two is missed.
        await loadBoard();
        if (first) refreshDestinations();
        first = false;
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value.replace(/\r\n?/g, '\n');
          let end;
          while ((end = buffer.indexOf('\n\n')) >= 0) {
            const raw = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            handleSse(raw);
          }
        }
      } catch (err) {
        if (abort.signal.aborted) return;
      }
      setLive(false);
      await new Promise((resolve) => setTimeout(resolve, RECONNECT_MS));
    }
  }

  // ---- Detail ------------------------------------------------------------

  function outcomeClass(outcome) {
    return OUTCOMES.includes(outcome) ? 'o-' + outcome : 'o-other';
  }

  /** Attempts per destination over time, one row each, coloured by outcome. */
  function timeline(b) {
    const width = 760;
    const labelWidth = 130;
    const rowHeight = 22;
    const top = 8;
    const height = top + b.deliveries.length * rowHeight + 26;
    const start = b.createdMs;
    let end = start + 1000;
    for (const d of b.deliveries) for (const a of d.attempts || []) end = Math.max(end, Date.parse(a.finished_at));
    if (b.status === 'delivering') end = Math.max(end, Date.now());
    const span = end - start;
    const x = (ms) => labelWidth + ((ms - start) / span) * (width - labelWidth - 10);
    const chart = svg('svg', { class: 'timeline', viewBox: '0 0 ' + width + ' ' + height, role: 'img',
      'aria-label': 'Attempts per destination over ' + (span / 1000).toFixed(1) + ' s, coloured by outcome' });
    b.deliveries.forEach((d, i) => {
      const y = top + i * rowHeight;
      chart.append(svg('text', { x: 4, y: y + 14, text: truncate(d.destination, 18) }));
      chart.append(svg('line', { class: 'axis', x1: labelWidth, x2: width - 10, y1: y + rowHeight - 2, y2: y + rowHeight - 2 }));
      for (const a of d.attempts || []) {
        const s = Date.parse(a.started_at);
        const f = Date.parse(a.finished_at);
        const rect = svg('rect', { class: outcomeClass(a.outcome), x: x(s).toFixed(1), y: y + 3,
          width: Math.max(4, x(f) - x(s)).toFixed(1), height: rowHeight - 8, rx: 2, 'data-outcome': a.outcome });
        rect.append(svg('title', { text: d.destination + ' #' + a.number + ' ' + a.kind + ': ' + a.outcome +
          (a.http_status ? ' · HTTP ' + a.http_status : '') + ' · ' + a.latency_ms + ' ms' + (a.error ? ' · ' + a.error : '') }));
        chart.append(rect);
      }
    });
    const axisY = top + b.deliveries.length * rowHeight + 16;
    for (let k = 0; k <= 4; k++) {
      const ms = start + (span * k) / 4;
      chart.append(svg('text', { x: x(ms), y: axisY, 'text-anchor': k === 0 ? 'start' : k === 4 ? 'end' : 'middle',
        text: '+' + ((ms - start) / 1000).toFixed(1) + ' s' }));
    }
    return chart;
  }

  function legend() {
    return el('div', { class: 'legend', 'aria-hidden': 'true' },
      ...OUTCOMES.map((o) => el('span', { class: 'l-' + o, text: o.replace('_', ' ') })));
  }

  /** The reference as a link to it where herald could build one (the Jira
   * issue, the Matrix event), else as text. */
  function remoteRef(d) {
    if (!d.remote_ref) return '—';
    const href = d.remote_url || d.remote_ref;
    if (/^https?:\/\//.test(href)) return el('a', { href, rel: 'noopener noreferrer', target: '_blank', text: d.remote_ref });
    return el('code', { text: d.remote_ref });
  }

  // ---- The message as each destination received it ------------------------

  /** The requests each destination was sent, from GET .../preview, read once
   * per broadcast shown (the rendering of an accepted broadcast does not
   * change while herald's templates stay the same). */
  function showReceived(id, root) {
    let entry = state.previews.get(id);
    if (!entry) {
      if (state.previews.size >= PREVIEWS_KEPT_MAX) state.previews.delete(state.previews.keys().next().value);
      entry = { answer: null, error: null };
      state.previews.set(id, entry);
      api('GET', 'v1/broadcasts/' + encodeURIComponent(id) + '/preview')
        .then((answer) => { entry.answer = answer; }, (err) => { entry.error = err; state.previews.delete(id); })
        .then(() => {
          const node = state.detailId === id && $('detail').querySelector('[data-role=received]');
          if (node) fillReceived(node, entry);
        });
    }
    fillReceived(root, entry);
  }

  /** A request body as people read it: JSON indented, anything else as is. */
  function readable(body) {
    try {
      return JSON.stringify(JSON.parse(body), null, 2);
    } catch (_) {
      return body;
    }
  }

  function fillReceived(root, entry) {
    root.textContent = '';
    if (entry.error) {
      root.append(el('p', { class: 'error', text: 'The rendered requests could not be read: ' + entry.error.message }));
      return;
    }
    if (!entry.answer) {
      root.append(el('p', { class: 'meta', text: 'Rendering…' }));
      return;
    }
    for (const dest of entry.answer.destinations) {
      const section = el('details', { class: 'received', 'data-dest': dest.name, open: true },
        el('summary', {}, el('b', { text: dest.name }), ' ', el('span', { class: 'meta', text: dest.kind })));
      if (dest.error) section.append(el('p', { class: 'error', text: dest.error }));
      else if (!dest.requests.length) section.append(el('p', { class: 'meta', text: 'herald does not render this kind\'s requests here; it carries the message above.' }));
      for (const request of dest.requests) {
        section.append(el('p', { class: 'meta' }, el('code', { text: request.call })),
          el('pre', { class: 'request', tabindex: 0, 'aria-label': dest.name + ' ' + request.call + ' body', text: readable(request.body) }));
      }
      root.append(section);
    }
  }

  async function act(action, b, destination, button) {
    button.disabled = true;
    const out = button.closest('.delivery').querySelector('[data-role=action-result]');
    try {
      const result = await api('POST', 'v1/broadcasts/' + encodeURIComponent(b.id) + '/' + action, { destinations: [destination] });
      out.textContent = result.changed.length ? action + ': done' : action + ': nothing to do';
      upsert(result);
    } catch (err) {
      out.textContent = action + ' refused: ' + err.message;
      button.disabled = false;
    }
  }

  function renderDetail() {
    const root = $('detail');
    const id = state.detailId;
    const b = state.broadcasts.get(id);
    if (!b || !isWhole(b)) {
      // The board holds a summary (no body, no attempts): read it whole.
      root.textContent = 'Loading…';
      refetch(id);
      return;
    }
    $('detail-title').textContent = b.title;
    root.textContent = '';
    const received = el('div', { 'data-role': 'received' });
    root.append(
      el('p', {},
        el('span', { class: 'sev ' + b.severity, text: b.severity }), ' ',
        el('span', { class: 'status ' + statusClass(b.status), 'data-role': 'detail-status', text: b.status }), ' ',
        el('span', { class: 'meta', text: 'accepted ' + when(b.createdMs) + (b.thread ? ' · thread ' + b.thread : '') + (b.resolved ? ' · resolves it' : '') + ' · ' + b.id })),
      el('h2', { text: 'Message' }),
      el('pre', { class: 'body', text: b.body || '(no body)' }),
      el('h2', { text: 'Attempts over time' }),
      legend(),
      timeline(b),
      el('h2', { text: 'Deliveries' }),
      el('div', { class: 'deliveries' }, ...b.deliveries.map((d) => deliveryCard(b, d))),
      el('h2', { text: 'As each destination received it' }),
      el('p', { class: 'meta', text: 'The requests a first attempt sends, rendered by each destination\'s template (an update in a thread shows as its first message would).' }),
      received);
    showReceived(b.id, received);
  }

  function deliveryCard(b, d) {
    const { words, paused } = chipWords(b, d);
    const actions = el('div', { class: 'actions' });
    if (can('operate')) {
      if (d.state === 'failed' || d.state === 'dead') {
        actions.append(el('button', { type: 'button', class: 'secondary', 'data-action': 'retry', 'data-dest': d.destination,
          'aria-label': 'Retry ' + d.destination, text: 'Retry',
          onclick: (e) => act('retry', b, d.destination, e.currentTarget) }));
      }
      if (!FINAL.has(d.state)) {
        actions.append(el('button', { type: 'button', class: 'danger', 'data-action': 'cancel', 'data-dest': d.destination,
          'aria-label': 'Cancel ' + d.destination, text: 'Cancel',
          onclick: (e) => act('cancel', b, d.destination, e.currentTarget) }));
      }
    }
    const attempts = (d.attempts || []).map((a) => el('tr', {},
      el('td', { text: '#' + a.number }), el('td', { text: a.kind }),
      el('td', {}, el('span', { class: 'chip ' + (a.outcome === 'success' ? 's-ok' : a.outcome === 'permanent' ? 's-bad' : 's-warn'), text: a.outcome })),
      el('td', { text: a.http_status ? 'HTTP ' + a.http_status : '' }),
      el('td', { text: when(Date.parse(a.started_at)) }), el('td', { text: a.latency_ms + ' ms' }),
      el('td', { text: a.error || '' })));
    return el('article', { class: 'delivery', 'data-dest': d.destination },
      el('header', {},
        el('b', { text: d.destination }),
        el('span', { class: 'chip ' + stateClass(d, paused), 'data-role': 'delivery-state', 'data-state': d.state, text: words }),
        actions),
      el('p', { class: 'meta', 'data-role': 'action-result', 'aria-live': 'polite' }),
      el('dl', {},
        el('dt', { text: 'remote_ref' }), el('dd', {}, remoteRef(d)),
        el('dt', { text: 'idempotency key' }), el('dd', {}, el('code', { text: d.idempotency_key || '—' })),
        el('dt', { text: 'last error' }), el('dd', { text: d.last_error || '—' })),
      attempts.length
        ? el('div', { class: 'table-wrap' }, el('table', { class: 'attempts' },
          el('thead', {}, el('tr', {}, ...['Attempt', 'Kind', 'Outcome', 'Status', 'Started', 'Latency', 'Error'].map((h) => el('th', { scope: 'col', text: h })))),
          el('tbody', {}, ...attempts)))
        : el('p', { class: 'meta', text: 'No attempt yet.' }));
  }

  /** Events between two reads of the detail: the chips follow them at once. */
  function renderDetailChips() {
    const b = state.broadcasts.get(state.detailId);
    if (!b) return;
    const root = $('detail');
    const status = root.querySelector('[data-role=detail-status]');
    if (!status) return renderDetail();
    status.textContent = b.status;
    status.className = 'status ' + statusClass(b.status);
    let structural = false;
    for (const d of b.deliveries) {
      const card = root.querySelector('.delivery[data-dest="' + CSS.escape(d.destination) + '"]');
      const chip = card && card.querySelector('[data-role=delivery-state]');
      if (!chip) continue;
      if (chip.dataset.state !== d.state) structural = true;
      const { words, paused } = chipWords(b, d);
      chip.textContent = words;
      chip.className = 'chip ' + stateClass(d, paused);
    }
    // A new state changes the buttons and the attempts: draw it again,
    // keeping the keyboard focus where it was.
    if (structural || (b.deliveries[0] && b.deliveries[0].attempts && lastDetailAttempts !== attemptCount(b))) {
      const focused = document.activeElement && document.activeElement.getAttribute('aria-label');
      renderDetail();
      if (focused) {
        const again = root.querySelector('[aria-label="' + CSS.escape(focused) + '"]');
        if (again) again.focus();
      }
    }
    lastDetailAttempts = attemptCount(b);
  }
  let lastDetailAttempts = -1;
  function attemptCount(b) {
    return b.deliveries.reduce((n, d) => n + (d.attempts ? d.attempts.length : 0), 0);
  }

  // ---- Destinations ------------------------------------------------------

  let destinationsTimer = null;
  let destinationsSoon = null;
  function refreshDestinationsSoon() {
    if (destinationsSoon) return;
    destinationsSoon = setTimeout(() => { destinationsSoon = null; refreshDestinations(); }, 500);
  }

  async function refreshDestinations() {
    clearTimeout(destinationsTimer);
    try {
      const list = await api('GET', 'v1/destinations');
      state.destinations = new Map(list.map((h) => [h.name, h]));
      fillDestinationChoices();
      if (currentPage() === 'destinations') renderDestinations();
      for (const b of state.broadcasts.values()) if (b.status === 'delivering') queueRender(b.id);
    } catch (err) {
      if (!(err instanceof ApiFailure)) reportQuietly(err);
    }
    destinationsTimer = setTimeout(refreshDestinations,
      currentPage() === 'destinations' ? DESTINATIONS_REFRESH_MS_ON_PAGE : DESTINATIONS_REFRESH_MS);
  }

  function fillDestinationChoices() {
    const select = $('f-destination');
    const chosen = select.value;
    const names = Array.from(state.destinations.keys()).sort();
    const have = Array.from(select.options).slice(1).map((o) => o.value);
    if (have.join('\n') !== names.join('\n')) {
      select.length = 1;
      for (const name of names) select.append(el('option', { value: name, text: name }));
      select.value = names.includes(chosen) ? chosen : '';
    }
    const boxes = $('s-destinations');
    const offered = Array.from(boxes.querySelectorAll('input')).map((i) => i.value);
    const active = names.filter((n) => state.destinations.get(n).status !== 'removed');
    if (offered.join('\n') !== active.join('\n')) {
      const checked = new Set(Array.from(boxes.querySelectorAll('input:checked')).map((i) => i.value));
      boxes.querySelectorAll('label').forEach((l) => l.remove());
      for (const name of active) {
        boxes.append(el('label', {}, el('input', { type: 'checkbox', name: 'destination', value: name, checked: checked.has(name) }), ' ' + name));
      }
    }
  }

  /** Confirmed and failed deliveries per 5 minutes over the last hour, from the broadcasts held. */
  function sparkline(name) {
    const buckets = 12;
    const bucketMs = 300000;
    const now = Date.now();
    const confirmed = new Array(buckets).fill(0);
    const failed = new Array(buckets).fill(0);
    for (const b of state.broadcasts.values()) {
      if (now - b.createdMs > buckets * bucketMs * 2) continue;
      const d = b.deliveries.find((x) => x.destination === name);
      if (!d) continue;
      const at = d.finalAt || (d.attempts && d.attempts.length ? Date.parse(d.attempts[d.attempts.length - 1].finished_at) : 0);
      if (!at) continue;
      const i = buckets - 1 - Math.floor((now - at) / bucketMs);
      if (i < 0 || i >= buckets) continue;
      if (d.state === 'confirmed') confirmed[i]++;
      else if (d.state === 'failed' || d.state === 'dead') failed[i]++;
    }
    const max = Math.max(1, ...confirmed, ...failed);
    const points = (series) => series.map((v, i) => (i * 8) + ',' + (22 - (v / max) * 20).toFixed(1)).join(' ');
    const total = (s) => s.reduce((a, v) => a + v, 0);
    return svg('svg', { class: 'spark', width: 90, height: 24, viewBox: '0 0 90 24', role: 'img',
      'aria-label': total(confirmed) + ' confirmed, ' + total(failed) + ' failed in the last hour' },
    svg('polyline', { class: 'c', points: points(confirmed) }),
    svg('polyline', { class: 'f', points: points(failed) }),
    svg('title', { text: total(confirmed) + ' confirmed, ' + total(failed) + ' failed in the last hour (broadcasts on the board)' }));
  }

  function renderDestinations() {
    const body = $('dest-body');
    const openForm = body.querySelector('.pause-form:not([hidden])');
    if (openForm && openForm.contains(document.activeElement)) return; // do not pull the form from under the operator
    body.textContent = '';
    for (const h of state.destinations.values()) {
      const pausedUntil = h.pause
        ? (h.pause.until ? clock(Date.parse(h.pause.until)) : 'until resumed') + ' (' + h.pause.paused_by + ': ' + h.pause.reason + ')'
        : (h.paused_until && Date.parse(h.paused_until) > Date.now() ? clock(Date.parse(h.paused_until)) + ' (429)' : '—');
      const actions = el('td', {});
      if (can('operate') && h.status !== 'removed') {
        if (h.pause) {
          actions.append(el('button', { type: 'button', class: 'secondary', 'aria-label': 'Resume ' + h.name, text: 'Resume',
            onclick: async (e) => {
              e.currentTarget.disabled = true;
              try { await api('POST', 'v1/destinations/' + encodeURIComponent(h.name) + '/resume'); } catch (err) { alertIn(actions, err); }
              refreshDestinations();
            } }));
        } else {
          const form = el('form', { class: 'pause-form', hidden: true },
            el('label', { class: 'sr', for: 'pf-' + h.name, text: 'Pause for' }),
            el('select', { id: 'pf-' + h.name, name: 'for' },
              el('option', { value: '15m', text: '15 min' }), el('option', { value: '1h', text: '1 hour' }),
              el('option', { value: '4h', text: '4 hours' }), el('option', { value: '', text: 'until resumed' })),
            el('input', { name: 'reason', placeholder: 'reason', required: true, 'aria-label': 'Reason for pausing ' + h.name }),
            el('button', { type: 'submit', text: 'Pause' }));
          form.addEventListener('submit', async (e) => {
            e.preventDefault();
            const request = { reason: form.elements.reason.value };
            if (form.elements.for.value) request.for = form.elements.for.value;
            try {
              await api('POST', 'v1/destinations/' + encodeURIComponent(h.name) + '/pause', request);
              form.hidden = true;
              document.activeElement.blur();
            } catch (err) { alertIn(actions, err); }
            refreshDestinations();
          });
          actions.append(el('button', { type: 'button', class: 'secondary', 'aria-label': 'Pause ' + h.name, text: 'Pause…',
            onclick: () => { form.hidden = !form.hidden; if (!form.hidden) form.elements.reason.focus(); } }), form);
        }
      }
      body.append(el('tr', { 'data-dest': h.name },
        el('th', { scope: 'row' }, h.name, el('div', { class: 'meta', text: h.kind })),
        el('td', { text: h.status }),
        el('td', { text: h.in_flight + ' / ' + h.concurrency }),
        el('td', { text: String(h.backlog) }),
        el('td', { text: h.oldest_waiting_since ? ago(Date.parse(h.oldest_waiting_since)) : '—' }),
        el('td', { text: pausedUntil }),
        el('td', {}, el('span', { class: 'chip ' + (h.circuit === 'closed' ? 's-ok' : h.circuit === 'open' ? 's-bad' : 's-warn'), text: h.circuit })),
        el('td', { text: h.last_error ? truncate(h.last_error, 80) + (h.last_error_at ? ' (' + ago(Date.parse(h.last_error_at)) + ')' : '') : '—', title: h.last_error || '' }),
        el('td', {}, sparkline(h.name)),
        actions));
    }
  }

  function alertIn(node, err) {
    node.append(el('p', { class: 'error', role: 'alert', text: err.message }));
  }

  // ---- Send --------------------------------------------------------------

  let sendKey = randomKey();

  async function submitSend(e) {
    e.preventDefault();
    const error = $('send-error');
    error.textContent = '';
    const request = {
      title: $('s-title').value,
      severity: $('s-severity').value,
      destinations: Array.from($('s-destinations').querySelectorAll('input:checked')).map((i) => i.value),
    };
    const typed = $('s-destinations').querySelector('input[type=text]');
    if (typed) request.destinations = typed.value.split(',').map((n) => n.trim()).filter(Boolean);
    if ($('s-body').value) request.body = $('s-body').value;
    if ($('s-thread').value.trim()) request.thread = $('s-thread').value.trim();
    if ($('s-resolved').checked) request.resolved = true;
    if (!request.destinations.length) {
      error.textContent = 'destinations: choose at least one destination';
      const first = $('s-destinations').querySelector('input');
      if (first) first.focus();
      return;
    }
    const button = $('s-submit');
    button.disabled = true;
    try {
      const b = await api('POST', 'v1/broadcasts', request, { 'Idempotency-Key': sendKey });
      sendKey = randomKey();
      upsert(b);
      state.sendWatchId = b.id;
      renderSendWatch();
      $('s-title').value = '';
      $('s-body').value = '';
    } catch (err) {
      error.textContent = (err.field ? err.field + ': ' : '') + err.message;
      const fieldInput = { title: 's-title', body: 's-body', thread: 's-thread', severity: 's-severity' }[(err.field || '').split(/[.[]/)[0]];
      if (fieldInput) $(fieldInput).focus();
      if (err.status !== 409 && err.status < 500) sendKey = randomKey();
    } finally {
      button.disabled = false;
    }
  }

  function renderSendWatch() {
    const root = $('send-result');
    const b = state.sendWatchId && state.broadcasts.get(state.sendWatchId);
    if (!b) return;
    root.textContent = '';
    const row = el('article', { class: 'bc', 'data-id': b.id },
      el('div', { class: 'head' },
        el('span', { class: 'sev ' + b.severity, text: b.severity }),
        el('a', { class: 'title', href: '#b/' + b.id, text: b.title }),
        el('span', { class: 'status', 'data-role': 'status' })),
      el('div', { class: 'chips', 'data-role': 'chips' }));
    fillRow(row, b);
    root.append(el('h2', { text: 'Accepted as ' + b.id }), row);
  }

  // ---- Pages and start ----------------------------------------------------

  function currentPage() {
    const hash = location.hash.replace(/^#/, '');
    if (hash.startsWith('b/')) return 'detail';
    if (hash === 'destinations' || hash === 'send') return hash;
    return 'board';
  }

  function showPage() {
    if (!state.started) return;
    const page = currentPage();
    for (const section of document.querySelectorAll('main > .page')) section.hidden = section.id !== 'page-' + page;
    for (const link of document.querySelectorAll('.top nav a')) {
      if (link.dataset.page === page) link.setAttribute('aria-current', 'page');
      else link.removeAttribute('aria-current');
    }
    state.detailId = page === 'detail' ? decodeURIComponent(location.hash.slice(3)) : null;
    lastDetailAttempts = -1;
    if (page === 'detail') {
      renderDetail();
      refetch(state.detailId);
    }
    if (page === 'destinations') {
      renderDestinations();
      refreshDestinations();
    }
    if (page === 'send') {
      const allowed = can('send');
      $('send-denied').hidden = allowed;
      $('send-form').hidden = !allowed;
    }
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = '';
    if (state.streamAbort) state.streamAbort.abort();
    if (message) sessionStorage.setItem('herald.signout', message);
    location.reload();
  }

  async function start() {
    // `#board?thread=INC-42` opens the board filtered on that thread.
    const linked = location.hash.match(/^#board\?thread=(.+)$/);
    if (linked) {
      $('f-thread').value = decodeURIComponent(linked[1]);
      currentFilters = null;
    }
    let me;
    try {
      me = await api('GET', 'v1/whoami');
    } catch (err) {
      if (err instanceof ApiFailure && err.status === 401) {
        sessionStorage.removeItem(TOKEN_KEY);
        state.token = '';
        return showLogin('That token is not valid: ' + err.message);
      }
      return showLogin('herald did not answer: ' + err.message);
    }
    if (me.tokens_required && !state.token) return showLogin(sessionStorage.getItem('herald.signout') || '');
    sessionStorage.removeItem('herald.signout');
    state.me = me;
    state.started = true;
    $('login').hidden = true;
    $('who').textContent = (me.tokens_required ? 'token ' + me.name : 'no token needed') + ' · ' + (me.scopes.join(', ') || 'no scope');
    $('forget').hidden = !state.token;
    showPage();
    if (!can('read')) {
      // Without the read scope the destinations cannot be listed: name them.
      $('s-destinations').append(el('label', {}, 'Names, comma-separated ',
        el('input', { type: 'text', name: 'destinations', spellcheck: 'false' })));
      setLive(false, 'no read scope');
      $('board-counts').textContent = 'This token lacks the read scope: the board needs it.';
      return;
    }
    setInterval(tick, 1000);
    streamEvents();
  }

  function showLogin(message) {
    for (const section of document.querySelectorAll('main > .page')) section.hidden = true;
    $('login').hidden = false;
    $('login-error').textContent = message || '';
    setLive(false, 'signed out');
    $('token-input').focus();
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('login-form').addEventListener('submit', (e) => {
      e.preventDefault();
      state.token = $('token-input').value.trim();
      sessionStorage.setItem(TOKEN_KEY, state.token);
      $('token-input').value = '';
      start();
    });
    $('forget').addEventListener('click', () => signOut(''));
    $('filters').addEventListener('input', applyFilters);
    $('filters').addEventListener('submit', (e) => e.preventDefault());
    $('send-form').addEventListener('submit', submitSend);
    window.addEventListener('hashchange', showPage);
    start();
  });
})();
