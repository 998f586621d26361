// veer's live page: polls /status every second and each service's history
// every five, draws the window figures as small SVG charts, and sends the
// operator's actions with the token typed into the page. Every name and
// value from the API is written with textContent or as an SVG attribute,
// never parsed as markup. The token lives in `token` below and nowhere else.
'use strict';

(function () {
  const SVG = 'http://www.w3.org/2000/svg';
  const POLL_MS = 1000;
  const HISTORY_MS = 5000;
  let token = '';
  const series = new Map();   // "service\u0000version" -> [{t, rps, err, p50, p95, p99, weight}]
  const views = new Map();    // service name -> its DOM parts
  const histories = new Map(); // service name -> records, newest first
  let lastHistory = 0;
  let lastStatus = null;

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const key of Object.keys(attrs || {})) node.setAttribute(key, String(attrs[key]));
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function say(text, kind) {
    const box = document.getElementById('message');
    box.textContent = text;
    box.className = kind || '';
  }

  function fmt(n, digits) {
    if (n === null || n === undefined || Number.isNaN(n)) return '–';
    return Number(n).toFixed(digits);
  }

  function percent(rate) {
    return rate === null || rate === undefined ? '–' : fmt(rate * 100, 2) + ' %';
  }

  function duration(ms) {
    if (ms === null || ms === undefined) return '–';
    const s = Math.round(ms / 1000);
    if (s < 60) return s + 's';
    const m = Math.floor(s / 60);
    if (m < 60) return m + 'm' + String(s % 60).padStart(2, '0') + 's';
    return Math.floor(m / 60) + 'h' + String(m % 60).padStart(2, '0') + 'm';
  }

  function when(unixMs) {
    return unixMs ? new Date(unixMs).toLocaleString() : '–';
  }

  // ---- the admin API -------------------------------------------------

  async function getJson(path) {
    const answer = await fetch(path, { cache: 'no-store', credentials: 'omit' });
    if (!answer.ok) throw new Error(path + ': ' + answer.status + ' ' + (await answer.text()).trim());
    return answer.json();
  }

  async function act(service, action, body) {
    const headers = { 'content-type': 'application/json' };
    if (token) headers.authorization = 'Bearer ' + token;
    const path = '/services/' + encodeURIComponent(service) + '/' + action;
    try {
      const answer = await fetch(path, {
        method: 'POST', headers, credentials: 'omit', cache: 'no-store',
        body: body === undefined ? '' : JSON.stringify(body),
      });
      const text = (await answer.text()).trim();
      if (answer.ok) {
        say(action + ' ' + service + ': done', 'ok');
      } else {
        say(action + ' ' + service + ' refused (' + answer.status + '): ' + text, 'error');
      }
    } catch (err) {
      say(action + ' ' + service + ' failed: ' + err.message, 'error');
    }
    lastHistory = 0;
    poll();
  }

  // ---- one service's parts, built once and updated -------------------

  function button(label, cls, onClick) {
    const b = el('button', cls, label);
    b.type = 'button';
    b.addEventListener('click', onClick);
    return b;
  }

  function buildService(name) {
    const root = el('section', 'service');
    root.dataset.service = name;
    const title = el('h2');
    const titleName = el('span', 'name', name);
    const titleBadges = el('span');
    title.append(titleName, titleBadges);
    const rollout = el('p', 'rollout muted');
    // The mirror: where copies go, what became of them, and the pairs'
    // verdict; hidden for a service that mirrors nothing.
    const mirror = el('div', 'mirror');
    mirror.hidden = true;
    const mirrorTitle = el('p', 'mirror-title');
    const mirrorFigures = el('dl', 'figures mirror-figures');
    const mirrorCells = {};
    for (const [key, label] of [['sent', 'sent'], ['dropped', 'dropped'], ['failed', 'failed'],
      ['skipped', 'skipped'], ['pairs', 'pairs'], ['mismatch', 'mismatch rate'], ['ratio', 'latency ratio p95']]) {
      const box = el('div');
      const dd = el('dd');
      dd.dataset.field = key;
      box.append(el('dt', null, label), dd);
      mirrorFigures.append(box);
      mirrorCells[key] = dd;
    }
    const mirrorVerdict = el('p', 'mirror-verdict muted');
    mirror.append(mirrorTitle, mirrorFigures, mirrorVerdict);
    const actions = el('div', 'actions');
    actions.append(
      button('Promote', 'promote', () => act(name, 'promote')),
      button('Pause', 'pause', () => act(name, 'pause')),
      button('Resume', 'resume', () => act(name, 'resume')),
      button('Rollback', 'rollback danger', () => act(name, 'rollback')),
    );
    const weights = el('span', 'weights');
    actions.append(weights);
    const versions = el('div', 'versions');
    const details = el('details', 'history');
    details.open = true;
    const summary = el('summary', null, 'Release history');
    const wrap = el('div', 'table-wrap');
    const table = el('table');
    const head = el('tr');
    for (const h of ['started', 'kind', 'version', 'revision', 'by', 'outcome', 'reason', 'took', 'steps']) {
      head.append(el('th', null, h));
    }
    const thead = el('thead');
    thead.append(head);
    const tbody = el('tbody');
    table.append(thead, tbody);
    wrap.append(table);
    details.append(summary, wrap);
    root.append(title, rollout, mirror, actions, versions, details);
    const view = { root, titleBadges, rollout, mirror, mirrorTitle, mirrorCells, mirrorVerdict, weights, weightInputs: new Map(), versions, cards: new Map(), tbody, historyKey: '' };
    views.set(name, view);
    return view;
  }

  function buildWeights(view, name, versions) {
    clear(view.weights);
    view.weightInputs.clear();
    for (const v of versions) {
      const label = el('label', null, v.name + ' ');
      const input = el('input');
      input.type = 'number';
      input.min = '0';
      input.step = '1';
      input.value = String(v.weight);
      input.dataset.shown = input.value;
      input.setAttribute('aria-label', 'weight of ' + v.name);
      label.append(input);
      view.weightInputs.set(v.name, input);
      view.weights.append(label);
    }
    view.weights.append(button('Set weights', 'set-weights', () => {
      const body = {};
      for (const [version, input] of view.weightInputs) body[version] = Number(input.value);
      act(name, 'weights', body);
    }));
    view.weightsKey = versions.map(v => v.name).join('\u0000');
  }

  function buildCard() {
    const card = el('div', 'version');
    const h = el('h3');
    const name = el('span');
    const badges = el('span');
    h.append(name, badges);
    const revision = el('div', 'muted');
    const figures = el('dl', 'figures');
    const cells = {};
    for (const [key, label] of [['weight', 'weight'], ['rps', 'req/s'], ['err', 'errors'],
      ['p50', 'p50'], ['p95', 'p95'], ['p99', 'p99']]) {
      const box = el('div');
      const dd = el('dd');
      box.append(el('dt', null, label), dd);
      figures.append(box);
      cells[key] = dd;
    }
    const verdict = el('div', 'muted');
    const charts = {
      traffic: chart('requests/s and weight'),
      errors: chart('error rate'),
      latency: chart('latency p50 / p95 / p99'),
    };
    const legend = el('div', 'legend');
    for (const [cls, text] of [['k-rps', 'req/s'], ['k-weight', 'weight %'], ['k-err', 'errors'],
      ['k-p50', 'p50'], ['k-p95', 'p95'], ['k-p99', 'p99']]) {
      legend.append(el('span', cls, '— ' + text));
    }
    const endpoints = el('ul', 'endpoints');
    card.append(h, revision, figures, verdict, charts.traffic, charts.errors, charts.latency, legend, endpoints);
    return { card, name, badges, revision, cells, verdict, charts, endpoints };
  }

  function chart(title) {
    const node = svg('svg', { class: 'chart', viewBox: '0 0 300 70', preserveAspectRatio: 'none', role: 'img' });
    const t = svg('title');
    t.textContent = title;
    node.append(t);
    return node;
  }

  // ---- drawing ---------------------------------------------------------

  function draw(node, windowMs, now, lines, marks, label) {
    while (node.childNodes.length > 1) node.removeChild(node.lastChild);
    node.append(svg('rect', { class: 'frame', x: 0.5, y: 0.5, width: 299, height: 69 }));
    let max = 0;
    for (const line of lines) for (const p of line.points) if (p.v !== null && p.v > max) max = p.v;
    if (max <= 0) max = 1;
    const x = t => 300 * (1 - (now - t) / windowMs);
    const y = v => 66 - 60 * (v / max);
    for (const line of lines) {
      const pts = line.points.filter(p => p.v !== null).map(p => x(p.t).toFixed(1) + ',' + y(p.v).toFixed(1));
      if (pts.length > 1) node.append(svg('polyline', { class: line.cls, points: pts.join(' ') }));
    }
    for (const m of marks) {
      if (now - m.t > windowMs) continue;
      const at = x(m.t).toFixed(1);
      if (m.kind === 'trip') {
        node.append(svg('line', { class: 'trip', x1: at, x2: at, y1: 0, y2: 70 }));
        const head = svg('path', { class: 'trip-head', d: 'M' + at + ' 0 l4 7 h-8 z' });
        const tip = svg('title');
        tip.textContent = m.text;
        head.append(tip);
        node.append(head);
      } else {
        node.append(svg('circle', { class: 'bad', cx: at, cy: 66, r: 2.5 }));
      }
    }
    const text = svg('text', { class: 'label', x: 3, y: 10 });
    text.textContent = label + ' (max ' + fmt(max, max < 1 ? 3 : 1) + ')';
    node.append(text);
  }

  function remember(key, point, windowMs) {
    let list = series.get(key);
    if (!list) { list = []; series.set(key, list); }
    list.push(point);
    while (list.length && point.t - list[0].t > windowMs) list.shift();
    return list;
  }

  // ---- one poll -------------------------------------------------------

  function renderService(s, now, seen) {
    seen.add(s.name);
    const view = views.get(s.name) || buildService(s.name);
    const main = document.getElementById('services');
    if (view.root.parentNode !== main) main.append(view.root);
    const windowMs = Math.max(1, s.window_seconds) * 1000;
    const total = s.versions.reduce((sum, v) => sum + v.weight, 0) || 1;

    clear(view.titleBadges);
    const latches = (s.guard && s.guard.latches) || [];
    if (latches.length) view.titleBadges.append(el('span', 'badge latched', 'rolled back'));
    const r = s.rollout;
    if (r) {
      let text = 'Rollout of ' + r.candidate + ' ' + r.revision + ': step ' + r.step + ' of ' + r.steps +
        ' (' + r.percent + ' %), ' + r.state.replace('_', ' ');
      if (r.paused) text += r.pause_reason ? ', paused: ' + r.pause_reason : ', paused';
      if (r.state === 'in_progress' && r.hold_remaining_ms !== null && r.hold_remaining_ms !== undefined) {
        text += ', hold ' + duration(r.hold_remaining_ms) + ' left';
      } else if (r.manual && r.state === 'in_progress') {
        text += ', waiting for promote';
      }
      // A check's pause also leaves its words as the gate's: said once.
      if (r.gate && !(r.pause_reason && r.gate.includes(r.pause_reason))) text += ' — ' + r.gate;
      view.rollout.textContent = text;
      if (r.paused) view.titleBadges.append(el('span', 'badge paused', 'paused'));
      if (shadowStage(s)) view.titleBadges.append(el('span', 'badge shadow', 'shadow stage'));
    } else {
      view.rollout.textContent = 'No rollout configured.';
    }

    renderMirror(view, s);

    const key = s.versions.map(v => v.name).join('\u0000');
    if (view.weightsKey !== key) buildWeights(view, s.name, s.versions);
    // The fields follow the weights in force, except one being edited.
    for (const v of s.versions) {
      const input = view.weightInputs.get(v.name);
      if (input && document.activeElement !== input && input.value === input.dataset.shown) {
        input.value = String(v.weight);
      }
      if (input && input.value === String(v.weight)) input.dataset.shown = input.value;
    }

    const trips = ((s.guard && s.guard.events) || []).map(e => ({
      t: Date.parse(e.at), kind: 'trip', version: e.version,
      text: e.version + ' ' + e.revision + ': ' + e.reason,
    }));

    for (const v of s.versions) {
      let card = view.cards.get(v.name);
      if (!card) {
        card = buildCard();
        view.cards.set(v.name, card);
      }
      if (card.card.parentNode !== view.versions) view.versions.append(card.card);
      card.name.textContent = v.name;
      clear(card.badges);
      if (v.latched) card.badges.append(el('span', 'badge latched', 'latched'));
      if (v.unavailable) card.badges.append(el('span', 'badge bad', 'unavailable'));
      card.revision.textContent = 'revision ' + v.revision;
      const w = v.window;
      card.cells.weight.textContent = v.weight + ' (' + fmt(100 * v.weight / total, 0) + ' %)';
      card.cells.rps.textContent = fmt(w.rps, 1);
      card.cells.err.textContent = percent(w.error_rate);
      card.cells.p50.textContent = w.p50_ms === null || w.p50_ms === undefined ? '–' : fmt(w.p50_ms, 1) + ' ms';
      card.cells.p95.textContent = w.p95_ms === null || w.p95_ms === undefined ? '–' : fmt(w.p95_ms, 1) + ' ms';
      card.cells.p99.textContent = w.p99_ms === null || w.p99_ms === undefined ? '–' : fmt(w.p99_ms, 1) + ' ms';
      card.verdict.textContent = 'guard: ' + (v.guard_verdict || (s.guard && s.guard.baseline === v.name ? 'baseline' : 'no verdict yet'));

      const points = remember(s.name + '\u0000' + v.name, {
        t: now, rps: w.rps, err: w.error_rate, weight: 100 * v.weight / total,
        p50: w.p50_ms === undefined ? null : w.p50_ms,
        p95: w.p95_ms === undefined ? null : w.p95_ms,
        p99: w.p99_ms === undefined ? null : w.p99_ms,
        bad: typeof v.guard_verdict === 'string' && v.guard_verdict.startsWith('bad'),
      }, windowMs);
      const marks = trips.filter(m => m.version === v.name)
        .concat(points.filter(p => p.bad).map(p => ({ t: p.t, kind: 'bad' })));
      const line = (field, cls) => ({ cls, points: points.map(p => ({ t: p.t, v: p[field] })) });
      draw(card.charts.traffic, windowMs, now, [line('rps', 's-rps'), line('weight', 's-weight')], marks, 'req/s · weight %');
      draw(card.charts.errors, windowMs, now, [line('err', 's-err')], marks, 'error rate');
      draw(card.charts.latency, windowMs, now, [line('p50', 's-p50'), line('p95', 's-p95'), line('p99', 's-p99')], marks, 'ms');

      clear(card.endpoints);
      for (const e of v.endpoints) {
        let text = e.address + ' ' + e.health;
        if (e.ejected_for_ms) text += ' (' + duration(e.ejected_for_ms) + ')';
        card.endpoints.append(el('li', e.health, text));
      }
    }
    for (const [name, card] of view.cards) {
      if (!s.versions.some(v => v.name === name)) { card.card.remove(); view.cards.delete(name); }
    }
    renderHistory(view, histories.get(s.name) || []);
  }

  // The rollout is in its shadow stage: its first step, at 0 %, with the
  // mirror judging the candidate on copies.
  function shadowStage(s) {
    const r = s.rollout;
    return Boolean(r && s.mirror && r.state === 'in_progress' && r.step === 1 && r.percent === 0 &&
      s.mirror.version === r.candidate && s.mirror.verdict);
  }

  function renderMirror(view, s) {
    const m = s.mirror;
    view.mirror.hidden = !m;
    if (!m) return;
    const copies = m.copies || {};
    view.mirrorTitle.textContent = 'Mirror: ' + m.percent + ' % of requests copied to ' + m.version +
      (m.in_flight ? ' (' + m.in_flight + ' in flight)' : '');
    for (const key of ['sent', 'dropped', 'failed', 'skipped']) {
      view.mirrorCells[key].textContent = String(copies[key] || 0);
    }
    view.mirrorCells.pairs.textContent = m.pairs + ' in ' + m.window_seconds + 's';
    view.mirrorCells.mismatch.textContent = percent(m.mismatch_rate) +
      (m.body_mismatches ? ' (' + m.body_mismatches + ' bodies)' : '');
    view.mirrorCells.ratio.textContent = m.latency_ratio_p95 === null || m.latency_ratio_p95 === undefined
      ? '–' : fmt(m.latency_ratio_p95, 2) + '×';
    let verdict;
    if (shadowStage(s)) {
      verdict = 'Shadow stage in progress: ' + m.version + ' takes no live request; verdict on the pairs: ' + m.verdict;
    } else if (m.verdict) {
      verdict = 'Verdict on the pairs: ' + m.verdict;
    } else {
      verdict = 'Pairs compared, not judged (no shadow stage running).';
    }
    if (m.live_errors) verdict += ' · ' + m.live_errors + ' pairs with a live 5xx, not judged';
    view.mirrorVerdict.textContent = verdict;
    view.mirror.classList.toggle('bad', typeof m.verdict === 'string' && m.verdict.startsWith('bad'));
  }

  // A step as the history shows it: its share, the candidate's window when
  // left, and for the shadow stage its pairs and verdict.
  function stepText(s) {
    if (s.shadow) {
      const p = s.shadow;
      return 'shadow (' + p.pairs + ' pairs, ' + percent(p.mismatch_rate) + ' mismatched, ' + p.verdict + ')';
    }
    // Live steps are above 0 %: a first step at 0 % is a shadow stage.
    if (s.step === 1 && s.percent === 0 && !s.left_unix_ms) return 'shadow (in progress)';
    const c = (s.figures || [])[0];
    return s.percent + '%' + (c ? ' (' + fmt(c.rps, 1) + ' req/s, ' + percent(c.error_rate) + ')' : '');
  }

  function renderHistory(view, records) {
    const key = records.map(r => r.id + r.outcome + (r.steps ? r.steps.length : 0) + (r.reason || '')).join(',');
    if (key === view.historyKey) return;
    view.historyKey = key;
    clear(view.tbody);
    if (!records.length) {
      const row = el('tr');
      const cell = el('td', 'muted', 'No releases recorded yet.');
      cell.colSpan = 9;
      row.append(cell);
      view.tbody.append(row);
      return;
    }
    for (const r of records) {
      const row = el('tr', 'record');
      row.dataset.kind = r.kind;
      const took = r.ended_unix_ms ? duration(r.ended_unix_ms - r.started_unix_ms) : 'running';
      const steps = (r.steps || []).map(stepText).join(' → ');
      for (const [text, cls] of [[when(r.started_unix_ms)], [r.kind], [r.version], [r.revision],
        [r.actor], [r.outcome.replace('_', ' '), 'o-' + r.outcome], [r.reason || '', 'reason'], [took], [steps, 'reason']]) {
        row.append(el('td', cls, text));
      }
      view.tbody.append(row);
    }
  }

  async function refreshHistories(names) {
    for (const name of names) {
      try {
        const answer = await getJson('/services/' + encodeURIComponent(name) + '/history');
        histories.set(name, answer.records || []);
      } catch (err) {
        // The service may have left the config between two polls.
        histories.delete(name);
      }
    }
  }

  let polling = false;
  async function poll() {
    if (polling) return;
    polling = true;
    try {
      const status = await getJson('/status');
      lastStatus = status;
      const now = Date.now();
      if (now - lastHistory >= HISTORY_MS) {
        lastHistory = now;
        await refreshHistories(status.services.map(s => s.name));
      }
      const main = document.getElementById('services');
      if (main.firstChild && main.firstChild.tagName === 'P') clear(main);
      const seen = new Set();
      for (const s of status.services) renderService(s, now, seen);
      for (const [name, view] of views) {
        if (!seen.has(name)) { view.root.remove(); views.delete(name); histories.delete(name); }
      }
      document.getElementById('config').textContent =
        'config generation ' + status.config.generation + (status.config.source ? ' · ' + status.config.source : '');
      document.getElementById('updated').textContent = 'updated ' + new Date(now).toLocaleTimeString();
    } catch (err) {
      say('cannot read the status: ' + err.message, 'error');
    } finally {
      polling = false;
    }
  }

  document.addEventListener('DOMContentLoaded', () => {
    const input = document.getElementById('token');
    input.addEventListener('input', () => { token = input.value.trim(); });
    document.getElementById('token-form').addEventListener('submit', e => e.preventDefault());
    poll();
    setInterval(poll, POLL_MS);
  });
  // For a test or a curious operator: the last status read.
  window.veerLastStatus = () => lastStatus;
})();
