// The warren management UI. Everything shown comes from warren's HTTP API under /api; the
// session cookie is HttpOnly, and the CSRF token lives only in this page's memory.
'use strict';

const state = { me: null, csrf: '', timers: [], refreshMs: 5000, vhosts: [] };
const enc = encodeURIComponent;

// ----- DOM -----

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') el.textContent = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, v);
  }
  for (const kid of kids.flat()) {
    if (kid === undefined || kid === null || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

let fieldSeq = 0;
// A labelled form field; `name` is the form field's name.
function field(label, name, input) {
  const id = 'f' + (++fieldSeq);
  const el = input || h('input', { type: 'text' });
  el.id = id;
  el.name = name;
  const isCheck = el.type === 'checkbox';
  return isCheck ? h('label', { class: 'check', for: id }, el, label) : h('label', { for: id }, label, el);
}
const input = (attrs) => h('input', Object.assign({ type: 'text' }, attrs));
const checkbox = (checked) => h('input', { type: 'checkbox', checked: !!checked });
function select(options, value) {
  const s = h('select', {});
  for (const o of options) {
    const [v, text] = Array.isArray(o) ? o : [o, o];
    s.append(h('option', { value: v, selected: v === value }, text));
  }
  return s;
}
function vhostSelect(value) { return select(state.vhosts, value || '/'); }

function notice(message, ok) {
  const n = document.getElementById('notice');
  n.textContent = message;
  n.className = ok ? 'ok' : '';
  n.hidden = !message;
  if (message && !ok) n.scrollIntoView({ block: 'nearest' });
}
function clearNotice() { notice(''); }

function table(columns, rows, opts) {
  const head = h('tr', {}, columns.map((c) => h('th', { class: c.num ? 'num' : null, scope: 'col' }, c.title)));
  const body = rows.map((r) => h('tr', {}, columns.map((c) => h('td', { class: c.num ? 'num' : null }, c.cell(r)))));
  if (rows.length === 0) body.push(h('tr', {}, h('td', { colspan: columns.length, class: 'muted' }, (opts && opts.empty) || 'None.')));
  return h('div', { class: 'table-wrap' }, h('table', {}, h('thead', {}, head), h('tbody', {}, body)));
}

// ----- formatting -----

function num(n) { return n === undefined || n === null ? '' : Number(n).toLocaleString('en'); }
function rate(r) { return r === undefined || r === null ? '' : (Math.round(r * 10) / 10).toLocaleString('en') + '/s'; }
function bytes(n) {
  if (n === undefined || n === null) return 'unknown';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + ' ' + u[i];
}
function duration(ms) {
  const s = Math.floor(ms / 1000);
  const d = Math.floor(s / 86400), hh = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  return (d ? d + 'd ' : '') + (d || hh ? hh + 'h ' : '') + m + 'm ' + (s % 60) + 's';
}
function rateOf(stats, key) { return stats && stats[key + '_details'] ? stats[key + '_details'].rate : 0; }

// ----- the API -----

class ApiError extends Error {
  constructor(status, text) { super(text); this.status = status; }
}

async function api(method, path, body, extra) {
  const headers = { 'Content-Type': 'application/json' };
  if (method !== 'GET') headers['X-CSRF-Token'] = state.csrf;
  Object.assign(headers, extra || {});
  const r = await fetch(path, {
    method, headers, credentials: 'same-origin', cache: 'no-store',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!r.ok) {
    const reason = data && (data.reason || data.error) ? data.reason || data.error : text || r.statusText;
    if (r.status === 401 && state.me && path !== '/api/login') {
      state.me = null;
      showLogin('Your session has ended: please log in again.');
    }
    throw new ApiError(r.status, `${method} ${path} failed (${r.status}): ${reason}`);
  }
  return data;
}

// Runs an action from a form or button, showing its error in words.
function act(fn, okText) {
  return async (ev) => {
    if (ev) ev.preventDefault();
    try {
      const out = await fn(ev);
      if (okText) notice(typeof okText === 'function' ? okText(out) : okText, true);
      else clearNotice();
    } catch (e) {
      notice(e.message);
    }
  };
}

// Key = value lines as an arguments table: numbers, true/false and JSON values typed.
function parseArgs(text) {
  const out = {};
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line) continue;
    const at = line.indexOf('=');
    if (at < 1) throw new Error(`"${line}": write arguments as key = value`);
    const k = line.slice(0, at).trim();
    const v = line.slice(at + 1).trim();
    if (/^-?\d+$/.test(v)) out[k] = Number(v);
    else if (v === 'true' || v === 'false') out[k] = v === 'true';
    else if (/^[[{]/.test(v)) out[k] = JSON.parse(v);
    else out[k] = v;
  }
  return out;
}
function formValue(form, name) {
  const el = form.elements[name];
  if (!el) return undefined;
  return el.type === 'checkbox' ? el.checked : el.value;
}

// ----- charts -----

const COLORS = ['#1a73e8', '#e8710a', '#1e8e3e', '#d93025', '#9334e6', '#12b5cb', '#795548'];

class Chart {
  constructor(title, labels, format) {
    this.labels = labels;
    this.format = format || num;
    this.points = [];
    this.canvas = h('canvas', { role: 'img', 'aria-label': title });
    this.legend = h('div', { class: 'legend' });
    this.el = h('figure', { class: 'chart' }, h('figcaption', {}, h('strong', {}, title)), this.canvas, this.legend);
  }
  push(t, values) {
    this.points.push([t, values]);
    if (this.points.length > 240) this.points.shift();
    this.draw();
  }
  draw() {
    const c = this.canvas, dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth || 300, hgt = c.clientHeight || 180;
    c.width = w * dpr; c.height = hgt * dpr;
    const g = c.getContext('2d');
    g.scale(dpr, dpr);
    g.clearRect(0, 0, w, hgt);
    const left = 56, bottom = 18, top = 8, right = 8;
    let max = 0;
    for (const [, vs] of this.points) for (const v of vs) max = Math.max(max, v);
    const step = niceStep(max / 4);
    const ymax = Math.max(step * 4, step);
    g.font = '11px system-ui, sans-serif';
    g.fillStyle = '#5f6368';
    g.strokeStyle = '#e3e3e8';
    for (let i = 0; i <= 4; i++) {
      const y = top + (hgt - top - bottom) * (1 - i / 4);
      g.beginPath(); g.moveTo(left, y); g.lineTo(w - right, y); g.stroke();
      g.fillText(this.format(step * i), 2, y + 4);
    }
    const n = this.points.length;
    if (n > 0) {
      const t0 = this.points[0][0], t1 = this.points[n - 1][0];
      const span = Math.max(t1 - t0, 1);
      const x = (t) => left + (w - left - right) * (n === 1 ? 1 : (t - t0) / span);
      const y = (v) => top + (hgt - top - bottom) * (1 - v / ymax);
      this.labels.forEach((_, i) => {
        g.strokeStyle = COLORS[i % COLORS.length];
        g.lineWidth = 2;
        g.beginPath();
        this.points.forEach(([t, vs], j) => (j ? g.lineTo(x(t), y(vs[i])) : g.moveTo(x(t), y(vs[i]))));
        g.stroke();
      });
      g.fillStyle = '#5f6368';
      g.fillText(new Date(t0).toLocaleTimeString(), left, hgt - 4);
      const last = new Date(t1).toLocaleTimeString();
      g.fillText(last, w - right - g.measureText(last).width, hgt - 4);
    }
    const latest = n ? this.points[n - 1][1] : [];
    this.legend.replaceChildren(...this.labels.map((l, i) =>
      h('span', {}, h('i', { class: 'sw' + (i % COLORS.length) }), `${l}: ${this.format(latest[i] || 0)}`)));
  }
}
function niceStep(x) {
  if (x <= 0) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(x)));
  for (const m of [1, 2, 5, 10]) if (m * p >= x) return m * p;
  return 10 * p;
}
const rateFormat = (v) => (Math.round(v * 10) / 10).toLocaleString('en') + '/s';

// ----- pages: the frame -----

function every(ms, fn) {
  fn();
  if (ms > 0) state.timers.push(setInterval(fn, ms));
}
function stopTimers() { state.timers.forEach(clearInterval); state.timers = []; }

function refreshPicker(onChange) {
  const s = select([['2000', 'every 2 s'], ['5000', 'every 5 s'], ['10000', 'every 10 s'], ['30000', 'every 30 s'], ['0', 'paused']], String(state.refreshMs));
  s.addEventListener('change', () => { state.refreshMs = Number(s.value); onChange(); });
  return field('Refresh', 'refresh', s);
}

function page(title, ...kids) {
  const main = document.getElementById('main');
  document.title = `${title} · warren`;
  main.replaceChildren(h('h1', {}, title), ...kids);
  return main;
}

function showLogin(message) {
  stopTimers();
  document.getElementById('top').hidden = true;
  const form = h('form', { class: 'box login', 'aria-labelledby': 'login-title' },
    h('h1', { id: 'login-title' }, 'warren'),
    h('p', { class: 'muted' }, 'Log in with a user that has a management tag.'),
    field('Username', 'username', input({ autocomplete: 'username', required: true })),
    field('Password', 'password', h('input', { type: 'password', autocomplete: 'current-password' })),
    h('div', { class: 'row' }, h('button', { type: 'submit' }, 'Log in')));
  form.addEventListener('submit', act(async () => {
    try {
      const me = await api('POST', '/api/login', { username: formValue(form, 'username'), password: formValue(form, 'password') });
      await start(me);
    } catch (e) {
      if (e.status === 401 && /management/.test(e.message)) {
        throw new Error('Login refused: this user has no management tag (administrator, monitoring, management or policymaker).');
      }
      if (e.status === 401) throw new Error('Login failed: wrong username or password, or this user may not log in from here.');
      throw e;
    }
  }));
  document.getElementById('main').replaceChildren(form);
  document.title = 'Log in · warren';
  if (message) notice(message); else clearNotice();
  form.elements.username.focus();
}

async function start(me) {
  state.me = me;
  state.csrf = me.csrf_token;
  document.getElementById('top').hidden = false;
  document.getElementById('who-name').textContent = `${me.name} (${me.tags.join(', ') || 'no tags'})`;
  try {
    state.vhosts = (await api('GET', '/api/vhosts')).map((v) => v.name);
  } catch (_) { state.vhosts = ['/']; }
  clearNotice();
  route();
}

const isAdmin = () => state.me && state.me.tags.includes('administrator');
const isMonitor = () => isAdmin() || (state.me && state.me.tags.includes('monitoring'));

function route() {
  if (!state.me) return;
  stopTimers();
  const parts = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  const section = parts[0] || '';
  for (const a of document.querySelectorAll('header nav a')) {
    const target = a.getAttribute('href').replace(/^#\/?/, '');
    if (target === section) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  const pages = {
    '': overviewPage, connections: connectionsPage, channels: channelsPage,
    exchanges: exchangesPage, queues: queuesPage, admin: adminPage,
  };
  const fn = pages[section] || (() => page('Not found', h('p', {}, 'No such page.')));
  Promise.resolve(fn(...parts.slice(1))).catch((e) => notice(e.message));
}

// ----- overview -----

const overviewCharts = {};
function overviewPage() {
  const queued = overviewCharts.queued || (overviewCharts.queued = new Chart('Queued messages', ['Ready', 'Unacked', 'Total']));
  const rates = overviewCharts.rates || (overviewCharts.rates = new Chart('Message rates',
    ['Publish', 'Confirm', 'Deliver', 'Redeliver', 'Ack', 'Get', 'Return'], rateFormat));
  const totals = h('div', { class: 'cards', id: 'totals' });
  const node = h('div', { class: 'box', id: 'node' });
  const run = () => every(state.refreshMs, act(async () => {
    const o = await api('GET', '/api/overview');
    const t = Date.now();
    const q = o.queue_totals, m = o.message_stats;
    queued.push(t, [q.messages_ready, q.messages_unacknowledged, q.messages]);
    rates.push(t, ['publish', 'confirm', 'deliver', 'redeliver', 'ack', 'get', 'return_unroutable'].map((k) => rateOf(m, k)));
    const ot = o.object_totals;
    totals.replaceChildren(...[['Connections', ot.connections], ['Channels', ot.channels], ['Exchanges', ot.exchanges],
      ['Queues', ot.queues], ['Consumers', ot.consumers], ['Ready', q.messages_ready], ['Unacked', q.messages_unacknowledged]]
      .map(([k, v]) => h('div', { class: 'card' }, h('div', { class: 'v', 'data-total': k }, num(v)), h('div', { class: 'k' }, k))));
    if (isMonitor()) renderNode(node, (await api('GET', '/api/nodes'))[0], o);
    else node.replaceChildren(h('p', { class: 'muted' }, 'Node details need the monitoring or administrator tag.'));
  }));
  page('Overview',
    h('div', { class: 'row' }, refreshPicker(() => { stopTimers(); run(); })),
    totals, h('h2', {}, 'Charts'), h('div', { class: 'charts' }, queued.el, rates.el),
    h('h2', {}, 'Node'), node);
  queued.draw(); rates.draw();
  run();
}

function gauge(used, limit) {
  if (!limit || used === null || used === undefined) return null;
  const pct = Math.min(100, Math.round(100 * used / limit));
  const bar = h('span', { class: pct >= 90 ? 'high' : null });
  bar.style.width = pct + '%';
  return h('div', { class: 'bar', role: 'meter', 'aria-valuenow': pct, 'aria-valuemin': 0, 'aria-valuemax': 100 }, bar);
}

function renderNode(el, n, o) {
  const alarms = n.alarms && n.alarms.length ? h('span', { class: 'alarm' }, n.alarms.join(', ')) : 'none';
  const diskHeadroom = n.disk_free === null ? null : n.disk_free_limit;
  el.replaceChildren(h('dl', { class: 'kv' },
    h('dt', {}, 'Node'), h('dd', {}, n.name),
    h('dt', {}, 'Version'), h('dd', {}, `warren ${o.product_version}`),
    h('dt', {}, 'Uptime'), h('dd', {}, duration(n.uptime)),
    h('dt', {}, 'Memory'), h('dd', {}, `${bytes(n.mem_used)} of ${n.mem_limit ? bytes(n.mem_limit) + ' high watermark' : 'an unknown watermark'}`, gauge(n.mem_used, n.mem_limit)),
    h('dt', {}, 'Disk free'), h('dd', {}, `${bytes(n.disk_free)} (alarm below ${bytes(n.disk_free_limit)})`,
      diskHeadroom ? gauge(n.disk_free_limit, n.disk_free) : null),
    h('dt', {}, 'Alarms'), h('dd', {}, alarms),
    h('dt', {}, 'File descriptors'), h('dd', {}, num(n.fd_used)),
    h('dt', {}, 'Listeners'), h('dd', {}, o.listeners.map((l) => `${l.protocol} ${l.ip_address.includes(':') ? `[${l.ip_address}]` : l.ip_address}:${l.port}`).join(', '))));
}

// ----- connections and channels -----

function connectionsPage(name) {
  if (name !== undefined) return connectionPage(name);
  const holder = h('div', {});
  page('Connections', h('div', { class: 'row' }, refreshPicker(() => { stopTimers(); run(); })), holder);
  const run = () => every(state.refreshMs, act(async () => {
    const conns = await api('GET', '/api/connections');
    holder.replaceChildren(table([
      { title: 'Name', cell: (c) => h('a', { href: '#/connections/' + enc(c.name) }, c.name) },
      { title: 'User', cell: (c) => c.user },
      { title: 'Vhost', cell: (c) => c.vhost },
      { title: 'Client', cell: (c) => clientName(c.client_properties) },
      { title: 'Channels', num: true, cell: (c) => num(c.channels) },
      { title: 'Connected', cell: (c) => new Date(c.connected_at).toLocaleString() },
    ], conns, { empty: 'No client is connected.' }));
  }));
  run();
}
function clientName(p) {
  if (!p) return '';
  return [p.product, p.version, p.platform].filter(Boolean).join(' ');
}

async function connectionPage(name) {
  const c = await api('GET', '/api/connections/' + enc(name));
  const chans = await api('GET', `/api/connections/${enc(name)}/channels`);
  const form = h('form', { class: 'box' }, h('h2', {}, 'Close this connection'),
    h('div', { class: 'row' }, field('Reason given to the client', 'reason', input({ value: 'Closed via management UI' })),
      h('button', { type: 'submit', class: 'danger' }, 'Force close')));
  form.addEventListener('submit', act(async () => {
    await api('DELETE', '/api/connections/' + enc(name), undefined, { 'X-Reason': formValue(form, 'reason') });
    location.hash = '#/connections';
  }, 'Connection closed.'));
  page('Connection ' + name,
    h('dl', { class: 'kv box' },
      h('dt', {}, 'User'), h('dd', {}, c.user), h('dt', {}, 'Vhost'), h('dd', {}, c.vhost),
      h('dt', {}, 'Peer'), h('dd', {}, `${c.peer_host}:${c.peer_port}`), h('dt', {}, 'Protocol'), h('dd', {}, c.protocol),
      h('dt', {}, 'Connected'), h('dd', {}, new Date(c.connected_at).toLocaleString())),
    h('h2', {}, 'Client properties'), h('pre', {}, JSON.stringify(c.client_properties, null, 2)),
    h('h2', {}, 'Channels'), channelTable(chans), form);
}

function channelTable(chans) {
  return table([
    { title: 'Channel', cell: (c) => c.name },
    { title: 'User', cell: (c) => c.user },
    { title: 'Vhost', cell: (c) => c.vhost },
    { title: 'Mode', cell: (c) => [c.confirm && 'confirm', c.transactional && 'transactional'].filter(Boolean).join(', ') },
    { title: 'Prefetch', num: true, cell: (c) => num(c.prefetch_count) },
    { title: 'Unacked', num: true, cell: (c) => num(c.messages_unacknowledged) },
    { title: 'Consumers', num: true, cell: (c) => num(c.consumer_count) },
    { title: 'Publish', num: true, cell: (c) => rate(rateOf(c.message_stats, 'publish')) },
    { title: 'Confirm', num: true, cell: (c) => rate(rateOf(c.message_stats, 'confirm')) },
    { title: 'Deliver / get', num: true, cell: (c) => rate(rateOf(c.message_stats, 'deliver_get')) },
    { title: 'Ack', num: true, cell: (c) => rate(rateOf(c.message_stats, 'ack')) },
    { title: 'State', cell: (c) => c.state },
  ], chans, { empty: 'No channels.' });
}

function channelsPage() {
  const holder = h('div', {});
  page('Channels', h('div', { class: 'row' }, refreshPicker(() => { stopTimers(); run(); })), holder);
  const run = () => every(state.refreshMs, act(async () => holder.replaceChildren(channelTable(await api('GET', '/api/channels')))));
  run();
}

// ----- exchanges -----

async function exchangesPage(vhost, name) {
  if (name !== undefined) return exchangePage(vhost, name);
  const list = await api('GET', '/api/exchanges');
  const form = h('form', { class: 'box', 'aria-label': 'Add an exchange' }, h('h2', {}, 'Add an exchange'),
    h('div', { class: 'fields' },
      field('Virtual host', 'vhost', vhostSelect()),
      field('Name', 'name', input({ required: true })),
      field('Type', 'type', select(['direct', 'fanout', 'topic', 'headers', 'x-consistent-hash'])),
      field('Durable', 'durable', checkbox(true)),
      field('Auto-delete', 'auto_delete', checkbox(false)),
      field('Internal', 'internal', checkbox(false)),
      field('Arguments (key = value per line)', 'arguments', h('textarea', { placeholder: 'alternate-exchange = my-ae' }))),
    h('div', { class: 'row' }, h('button', { type: 'submit' }, 'Add exchange')));
  form.addEventListener('submit', act(async () => {
    const v = formValue(form, 'vhost'), n = formValue(form, 'name');
    await api('PUT', `/api/exchanges/${enc(v)}/${enc(n)}`, {
      type: formValue(form, 'type'), durable: formValue(form, 'durable'), auto_delete: formValue(form, 'auto_delete'),
      internal: formValue(form, 'internal'), arguments: parseArgs(formValue(form, 'arguments')),
    });
    location.hash = `#/exchanges/${enc(v)}/${enc(n)}`;
  }));
  page('Exchanges', table([
    { title: 'Name', cell: (x) => h('a', { href: `#/exchanges/${enc(x.vhost)}/${enc(x.name || 'amq.default')}` }, x.name || '(AMQP default)') },
    { title: 'Vhost', cell: (x) => x.vhost },
    { title: 'Type', cell: (x) => x.type },
    { title: 'Features', cell: (x) => features(x) },
  ], list), isAdmin() || state.me.tags.length ? form : null);
}

function features(o) {
  const f = [];
  if (o.durable) f.push('durable');
  if (o.auto_delete) f.push('auto-delete');
  if (o.internal) f.push('internal');
  if (o.exclusive) f.push('exclusive');
  for (const k of Object.keys(o.arguments || {})) f.push(k);
  const tags = f.map((t) => h('span', { class: 'tag' }, t));
  if (o.policy) tags.push(h('span', { class: 'tag', title: 'policy' }, 'policy: ' + o.policy));
  if (o.operator_policy) tags.push(h('span', { class: 'tag', title: 'operator policy' }, 'operator policy: ' + o.operator_policy));
  return tags;
}

function bindingsTable(list, vhost) {
  return table([
    { title: 'From', cell: (b) => b.source || '(default)' },
    { title: 'To', cell: (b) => `${b.destination_type} ${b.destination}` },
    { title: 'Routing key', cell: (b) => b.routing_key },
    { title: 'Arguments', cell: (b) => Object.keys(b.arguments || {}).length ? JSON.stringify(b.arguments) : '' },
    { title: '', cell: (b) => b.source === '' ? '' : h('button', { type: 'button', class: 'plain', onclick: act(async () => {
      const kind = b.destination_type === 'queue' ? 'q' : 'e';
      await api('DELETE', `/api/bindings/${enc(vhost)}/e/${enc(b.source)}/${kind}/${enc(b.destination)}/${enc(b.properties_key)}`);
      route();
    }, 'Unbound.') }, 'Unbind') },
  ], list, { empty: 'No bindings.' });
}

function bindForm(vhost, fixed) {
  // fixed: {source} (an exchange page) or {destination, destination_type: 'q'} (a queue page)
  const form = h('form', { class: 'box', 'aria-label': 'Add a binding' }, h('h2', {}, 'Add a binding'),
    h('div', { class: 'fields' },
      fixed.source !== undefined
        ? [field('To', 'kind', select([['q', 'queue'], ['e', 'exchange']])), field('Destination name', 'destination', input({ required: true }))]
        : field('From exchange', 'source', input({ required: true })),
      field('Routing key', 'routing_key', input({})),
      field('Arguments (key = value per line)', 'arguments', h('textarea', {}))),
    h('div', { class: 'row' }, h('button', { type: 'submit' }, 'Bind')));
  form.addEventListener('submit', act(async () => {
    const source = fixed.source !== undefined ? fixed.source : formValue(form, 'source');
    const kind = fixed.source !== undefined ? formValue(form, 'kind') : 'q';
    const dest = fixed.source !== undefined ? formValue(form, 'destination') : fixed.destination;
    await api('POST', `/api/bindings/${enc(vhost)}/e/${enc(source)}/${kind}/${enc(dest)}`,
      { routing_key: formValue(form, 'routing_key'), arguments: parseArgs(formValue(form, 'arguments')) });
    route();
  }, 'Bound.'));
  return form;
}

function publishForm(vhost, exchange, routingKey) {
  const form = h('form', { class: 'box', 'aria-label': 'Publish a message' }, h('h2', {}, 'Publish a message'),
    h('div', { class: 'fields' },
      field('Routing key', 'routing_key', input({ value: routingKey || '' })),
      field('Delivery mode', 'delivery_mode', select([['2', '2 - persistent'], ['1', '1 - transient']])),
      field('Content type', 'content_type', input({})),
      field('Correlation id', 'correlation_id', input({})),
      field('Reply to', 'reply_to', input({})),
      field('Message id', 'message_id', input({})),
      field('Expiration (ms)', 'expiration', input({ inputmode: 'numeric' })),
      field('Priority', 'priority', input({ inputmode: 'numeric' })),
      field('Headers (key = value per line)', 'headers', h('textarea', {})),
      field('Payload', 'payload', h('textarea', {}))),
    h('div', { class: 'row' }, h('button', { type: 'submit' }, 'Publish message')));
  form.addEventListener('submit', act(async () => {
    const properties = { delivery_mode: Number(formValue(form, 'delivery_mode')) };
    for (const k of ['content_type', 'correlation_id', 'reply_to', 'message_id', 'expiration']) {
      if (formValue(form, k)) properties[k] = formValue(form, k);
    }
    if (formValue(form, 'priority')) properties.priority = Number(formValue(form, 'priority'));
    const headers = parseArgs(formValue(form, 'headers'));
    if (Object.keys(headers).length) properties.headers = headers;
    const out = await api('POST', `/api/exchanges/${enc(vhost)}/${enc(exchange || 'amq.default')}/publish`, {
      routing_key: formValue(form, 'routing_key'), properties, payload: formValue(form, 'payload'), payload_encoding: 'string',
    });
    return out.routed;
  }, (routed) => (routed ? 'Message published and routed.' : 'Message published, but it was not routed to any queue.')));
  return form;
}

async function exchangePage(vhost, name) {
  const x = await api('GET', `/api/exchanges/${enc(vhost)}/${enc(name)}`);
  const src = await api('GET', `/api/exchanges/${enc(vhost)}/${enc(name)}/bindings/source`);
  const dst = await api('GET', `/api/exchanges/${enc(vhost)}/${enc(name)}/bindings/destination`);
  const isDefault = x.name === '';
  const del = h('button', { type: 'button', class: 'danger', onclick: act(async () => {
    if (!confirm(`Delete exchange ${name}?`)) return;
    await api('DELETE', `/api/exchanges/${enc(vhost)}/${enc(name)}`);
    location.hash = '#/exchanges';
  }, 'Exchange deleted.') }, 'Delete this exchange');
  page(`Exchange ${x.name || '(AMQP default)'}`,
    h('dl', { class: 'kv box' }, h('dt', {}, 'Vhost'), h('dd', {}, x.vhost), h('dt', {}, 'Type'), h('dd', {}, x.type),
      h('dt', {}, 'Features'), h('dd', {}, features(x)), h('dt', {}, 'Arguments'), h('dd', {}, JSON.stringify(x.arguments))),
    h('h2', {}, 'Bindings from this exchange'), bindingsTable(src, vhost),
    h('h2', {}, 'Bindings to this exchange'), bindingsTable(dst, vhost),
    isDefault || name.startsWith('amq.') ? null : bindForm(vhost, { source: x.name }),
    publishForm(vhost, x.name, ''),
    isDefault || name.startsWith('amq.') ? null : h('div', { class: 'row' }, del));
}

// ----- queues -----

const QUEUE_COLUMNS = [
  { key: 'name', title: 'Name', sort: 'name', always: true },
  { key: 'vhost', title: 'Vhost', sort: 'vhost' },
  { key: 'type', title: 'Type' },
  { key: 'features', title: 'Features', cols: ['durable', 'auto_delete', 'exclusive', 'arguments'] },
  { key: 'state', title: 'State' },
  { key: 'messages_ready', title: 'Ready', sort: 'messages_ready', num: true },
  { key: 'messages_unacknowledged', title: 'Unacked', sort: 'messages_unacknowledged', num: true },
  { key: 'messages', title: 'Total', sort: 'messages', num: true },
  { key: 'consumers', title: 'Consumers', sort: 'consumers', num: true },
  { key: 'publish', title: 'Incoming', num: true, cols: ['message_stats.publish_details'] },
  { key: 'deliver_get', title: 'Deliver / get', num: true, cols: ['message_stats.deliver_get_details'] },
  { key: 'ack', title: 'Ack', num: true, cols: ['message_stats.ack_details'] },
];
const queueView = { page: 1, size: 100, name: '', regex: false, sort: 'name', reverse: false,
  shown: new Set(['name', 'vhost', 'type', 'features', 'state', 'messages_ready', 'messages_unacknowledged', 'messages', 'publish', 'deliver_get', 'ack']) };

function queueCell(c, q) {
  const stats = q.message_stats || {};
  switch (c.key) {
    case 'name': return h('a', { href: `#/queues/${enc(q.vhost)}/${enc(q.name)}` }, q.name);
    case 'features': return features(q);
    case 'publish': case 'deliver_get': case 'ack': return rate(rateOf(stats, c.key));
    default: return c.num ? num(q[c.key]) : q[c.key];
  }
}

async function queuesPage(vhost, name) {
  if (name !== undefined) return queuePage(vhost, name);
  const v = queueView;
  const holder = h('div', { id: 'queue-list' });
  const status = h('p', { class: 'muted', id: 'queue-status', 'aria-live': 'polite' });
  const controls = h('form', { class: 'row', role: 'search', 'aria-label': 'Filter queues' },
    field('Filter by name', 'name', input({ value: v.name, type: 'search' })),
    field('Regular expression', 'regex', checkbox(v.regex)),
    field('Page size', 'size', select(['20', '50', '100', '500'], String(v.size))),
    h('button', { type: 'submit' }, 'Apply'));
  controls.addEventListener('submit', (ev) => {
    ev.preventDefault();
    v.name = formValue(controls, 'name'); v.regex = formValue(controls, 'regex');
    v.size = Number(formValue(controls, 'size')); v.page = 1;
    load();
  });
  const colsBox = h('details', { class: 'box' }, h('summary', {}, 'Columns'),
    h('div', { class: 'row' }, QUEUE_COLUMNS.filter((c) => !c.always).map((c) => {
      const cb = checkbox(v.shown.has(c.key));
      cb.addEventListener('change', () => { if (cb.checked) v.shown.add(c.key); else v.shown.delete(c.key); load(); });
      return field(c.title, 'col-' + c.key, cb);
    })));
  async function load() {
    const t0 = performance.now();
    const shown = QUEUE_COLUMNS.filter((c) => c.always || v.shown.has(c.key));
    const cols = new Set(['name', 'vhost']);
    for (const c of shown) for (const k of c.cols || [c.key]) cols.add(k);
    const params = new URLSearchParams({ page: v.page, page_size: v.size, name: v.name, use_regex: v.regex,
      pagination: true, sort: v.sort, sort_reverse: v.reverse, columns: [...cols].join(',') });
    const data = await api('GET', '/api/queues?' + params);
    const head = h('tr', {}, shown.map((c) => {
      if (!c.sort) return h('th', { scope: 'col', class: c.num ? 'num' : null }, c.title);
      const active = v.sort === c.sort;
      return h('th', { scope: 'col', class: c.num ? 'num' : null, 'aria-sort': active ? (v.reverse ? 'descending' : 'ascending') : 'none' },
        h('button', { type: 'button', onclick: () => { v.reverse = active ? !v.reverse : false; v.sort = c.sort; load().catch((e) => notice(e.message)); } },
          c.title + (active ? (v.reverse ? ' ▼' : ' ▲') : '')));
    }));
    const rows = data.items.map((q) => h('tr', {}, shown.map((c) => h('td', { class: c.num ? 'num' : null }, queueCell(c, q)))));
    if (!rows.length) rows.push(h('tr', {}, h('td', { colspan: shown.length, class: 'muted' }, 'No queues match.')));
    const pager = h('div', { class: 'pager' },
      h('button', { type: 'button', class: 'plain', disabled: v.page <= 1, onclick: () => { v.page--; load(); } }, 'Previous page'),
      h('span', {}, `Page ${data.page} of ${Math.max(1, data.page_count)}`),
      h('button', { type: 'button', class: 'plain', disabled: v.page >= data.page_count, onclick: () => { v.page++; load(); } }, 'Next page'));
    holder.replaceChildren(h('div', { class: 'table-wrap' }, h('table', {}, h('thead', {}, head), h('tbody', {}, rows))), pager);
    const ms = Math.round(performance.now() - t0);
    status.textContent = `${num(data.filtered_count)} matching queues of ${num(data.total_count)}; page shown in ${ms} ms.`;
    status.dataset.renderMs = ms;
  }
  page('Queues', controls, colsBox, status, holder, addQueueForm());
  every(state.refreshMs > 0 ? Math.max(state.refreshMs, 5000) : 0, act(load));
}

function addQueueForm() {
  const form = h('form', { class: 'box', 'aria-label': 'Add a queue' }, h('h2', {}, 'Add a queue'),
    h('div', { class: 'fields' },
      field('Virtual host', 'vhost', vhostSelect()),
      field('Name', 'name', input({ required: true })),
      field('Durable', 'durable', checkbox(true)),
      field('Auto-delete', 'auto_delete', checkbox(false)),
      field('Message TTL (ms)', 'x-message-ttl', input({ inputmode: 'numeric' })),
      field('Expires after idle (ms)', 'x-expires', input({ inputmode: 'numeric' })),
      field('Max length (messages)', 'x-max-length', input({ inputmode: 'numeric' })),
      field('Max length (bytes)', 'x-max-length-bytes', input({ inputmode: 'numeric' })),
      field('Overflow', 'x-overflow', select([['', '(default: drop-head)'], 'drop-head', 'reject-publish', 'reject-publish-dlx'])),
      field('Dead-letter exchange', 'x-dead-letter-exchange', input({})),
      field('Dead-letter routing key', 'x-dead-letter-routing-key', input({})),
      field('Max priority', 'x-max-priority', input({ inputmode: 'numeric' })),
      field('Single active consumer', 'x-single-active-consumer', checkbox(false)),
      field('Other arguments (key = value per line)', 'arguments', h('textarea', {}))),
    h('p', { class: 'muted' }, 'An exclusive queue belongs to the connection that declares it, so it is declared by a client, not here.'),
    h('div', { class: 'row' }, h('button', { type: 'submit' }, 'Add queue')));
  form.addEventListener('submit', act(async () => {
    const args = parseArgs(formValue(form, 'arguments'));
    for (const k of ['x-message-ttl', 'x-expires', 'x-max-length', 'x-max-length-bytes', 'x-max-priority']) {
      const val = formValue(form, k).trim();
      if (val) {
        if (!/^\d+$/.test(val)) throw new Error(`${k}: expected a whole number, got "${val}"`);
        args[k] = Number(val);
      }
    }
    for (const k of ['x-overflow', 'x-dead-letter-exchange', 'x-dead-letter-routing-key']) {
      if (formValue(form, k)) args[k] = formValue(form, k);
    }
    if (formValue(form, 'x-single-active-consumer')) args['x-single-active-consumer'] = true;
    const v = formValue(form, 'vhost'), n = formValue(form, 'name');
    await api('PUT', `/api/queues/${enc(v)}/${enc(n)}`, {
      durable: formValue(form, 'durable'), auto_delete: formValue(form, 'auto_delete'), arguments: args,
    });
    location.hash = `#/queues/${enc(v)}/${enc(n)}`;
  }));
  return form;
}

function messageView(m) {
  const p = m.properties || {};
  return h('div', { class: 'box message' },
    h('dl', { class: 'kv' },
      h('dt', {}, 'Position'), h('dd', {}, num(m.position)),
      h('dt', {}, 'Exchange'), h('dd', {}, m.exchange || '(AMQP default)'),
      h('dt', {}, 'Routing key'), h('dd', {}, m.routing_key),
      h('dt', {}, 'Redelivered'), h('dd', {}, m.redelivered ? 'yes' : 'no'),
      h('dt', {}, 'Properties'), h('dd', {}, h('pre', {}, JSON.stringify(p, null, 2))),
      h('dt', {}, `Payload (${num(m.payload_bytes)} bytes, ${m.payload_encoding})`), h('dd', {}, h('pre', { class: 'payload' }, m.payload))));
}

function deathOf(m) {
  const deaths = m.properties && m.properties.headers && m.properties.headers['x-death'];
  if (!Array.isArray(deaths) || !deaths.length) return null;
  const first = deaths[deaths.length - 1], last = deaths[0];
  return { exchange: first.exchange, key: (first['routing-keys'] || [])[0], reason: last.reason, queue: last.queue, count: last.count };
}

async function queuePage(vhost, name) {
  const base = `/api/queues/${enc(vhost)}/${enc(name)}`;
  const chart = new Chart('Queued messages', ['Ready', 'Unacked']);
  const rates = new Chart('Message rates', ['Publish', 'Deliver / get', 'Ack', 'Redeliver'], rateFormat);
  const info = h('div', { class: 'box' });
  const consumers = h('div', {});
  const got = h('div', { id: 'messages' });
  const getForm = h('form', { class: 'box', 'aria-label': 'Get messages' }, h('h2', {}, 'Get messages'),
    h('div', { class: 'fields' },
      field('Mode', 'ackmode', select([
        ['peek', 'Peek: look without taking (nothing is redelivered)'],
        ['ack_requeue_true', 'Nack, requeue (marks them redelivered)'],
        ['reject_requeue_true', 'Reject, requeue'],
        ['ack_requeue_false', 'Ack: remove them from the queue'],
        ['reject_requeue_false', 'Reject, no requeue (dead-letters them)']], 'peek')),
      field('Encoding', 'encoding', select([['auto', 'Auto (string if UTF-8)'], ['base64', 'Base64']])),
      field('Messages', 'count', input({ value: '1', inputmode: 'numeric' })),
      field('Truncate payload to (bytes)', 'truncate', input({ value: '50000', inputmode: 'numeric' }))),
    h('div', { class: 'row' }, h('button', { type: 'submit' }, 'Get messages')));
  getForm.addEventListener('submit', act(async () => {
    const body = { count: Number(formValue(getForm, 'count')) || 1, ackmode: formValue(getForm, 'ackmode'), encoding: formValue(getForm, 'encoding') };
    if (formValue(getForm, 'truncate')) body.truncate = Number(formValue(getForm, 'truncate'));
    const msgs = await api('POST', base + '/get', body);
    got.replaceChildren(msgs.length ? h('div', {}, msgs.map(messageView)) : h('p', { class: 'muted' }, 'The queue has no ready messages.'));
    refresh();
  }));
  const dead = h('div', { id: 'dead-letters' });
  const showDead = h('button', { type: 'button', class: 'plain', onclick: act(() => loadDead(dead, base)) }, 'Show dead letters');
  const purge = h('button', { type: 'button', class: 'danger', onclick: act(async () => {
    if (!confirm(`Purge every ready message of ${name}?`)) return;
    await api('DELETE', base + '/contents');
    refresh();
  }, 'Queue purged.') }, 'Purge messages');
  const del = h('button', { type: 'button', class: 'danger', onclick: act(async () => {
    if (!confirm(`Delete queue ${name}?`)) return;
    await api('DELETE', base);
    location.hash = '#/queues';
  }, 'Queue deleted.') }, 'Delete this queue');
  const bindings = h('div', {});
  async function refresh() {
    const q = await api('GET', base);
    const t = Date.now(), s = q.message_stats || {};
    chart.push(t, [q.messages_ready, q.messages_unacknowledged]);
    rates.push(t, ['publish', 'deliver_get', 'ack', 'redeliver'].map((k) => rateOf(s, k)));
    info.replaceChildren(h('dl', { class: 'kv' },
      h('dt', {}, 'Vhost'), h('dd', {}, q.vhost),
      h('dt', {}, 'Type'), h('dd', {}, q.type), h('dt', {}, 'State'), h('dd', {}, q.state),
      h('dt', {}, 'Features'), h('dd', {}, features(q)),
      h('dt', {}, 'Arguments'), h('dd', {}, JSON.stringify(q.arguments)),
      h('dt', {}, 'Ready'), h('dd', { id: 'queue-ready' }, num(q.messages_ready)),
      h('dt', {}, 'Unacked'), h('dd', { id: 'queue-unacked' }, num(q.messages_unacknowledged)),
      h('dt', {}, 'Total'), h('dd', { id: 'queue-total' }, num(q.messages)),
      h('dt', {}, 'Ready bytes'), h('dd', {}, bytes(q.message_bytes_ready)),
      h('dt', {}, 'Consumers'), h('dd', {}, num(q.consumers))));
    const all = await api('GET', '/api/consumers/' + enc(vhost));
    consumers.replaceChildren(table([
      { title: 'Tag', cell: (c) => c.consumer_tag },
      { title: 'Channel', cell: (c) => c.channel_details.name },
      { title: 'Ack required', cell: (c) => (c.ack_required ? 'yes' : 'no') },
      { title: 'Prefetch', num: true, cell: (c) => num(c.prefetch_count) },
      { title: 'Exclusive', cell: (c) => (c.exclusive ? 'yes' : 'no') },
    ], all.filter((c) => c.queue.name === name), { empty: 'No consumers.' }));
    bindings.replaceChildren(bindingsTable(await api('GET', base + '/bindings'), vhost));
  }
  page(`Queue ${name}`, h('div', { class: 'row' }, refreshPicker(() => { stopTimers(); every(state.refreshMs, act(refresh)); })),
    info, h('div', { class: 'charts' }, chart.el, rates.el),
    h('h2', {}, 'Consumers'), consumers, h('h2', {}, 'Bindings'), bindings, bindForm(vhost, { destination: name }),
    publishForm(vhost, '', name), getForm, got,
    h('h2', {}, 'Dead letters'), h('p', { class: 'muted' }, 'Messages in this queue that died elsewhere, with where they were first published. Republishing takes the selected ones out of this queue and publishes each to its original exchange and routing key.'),
    showDead, dead, h('h2', {}, 'Danger zone'), h('div', { class: 'row' }, purge, del));
  chart.draw(); rates.draw();
  every(state.refreshMs, act(refresh));
}

async function loadDead(holder, base) {
  const msgs = await api('POST', base + '/get', { count: 100, ackmode: 'peek', encoding: 'auto', truncate: 200 });
  const dead = msgs.map((m) => ({ m, d: deathOf(m) })).filter((x) => x.d);
  const boxes = new Map();
  const rows = dead.map(({ m, d }) => {
    const cb = h('input', { type: 'checkbox', 'aria-label': `Select message ${m.position}` });
    boxes.set(m.position, cb);
    return h('tr', {}, h('td', {}, cb), h('td', { class: 'num' }, num(m.position)), h('td', {}, d.reason), h('td', {}, d.queue),
      h('td', {}, d.exchange || '(AMQP default)'), h('td', {}, d.key), h('td', {}, h('pre', {}, m.payload)));
  });
  if (!rows.length) rows.push(h('tr', {}, h('td', { colspan: 7, class: 'muted' }, 'None of the first 100 ready messages is a dead letter.')));
  const republish = h('button', { type: 'button', onclick: act(async () => {
    const positions = [...boxes].filter(([, cb]) => cb.checked).map(([p]) => p);
    if (!positions.length) throw new Error('Select the messages to republish first.');
    const out = await api('POST', base + '/republish', { positions });
    await loadDead(holder, base);
    return out.republished;
  }, (n) => `${n} message(s) republished to their original exchange.`) }, 'Republish selected');
  holder.replaceChildren(h('div', { class: 'table-wrap' }, h('table', {},
    h('thead', {}, h('tr', {}, ['', 'Position', 'Reason', 'Died in', 'First exchange', 'First routing key', 'Payload'].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, rows))), h('div', { class: 'row' }, republish));
}

// ----- admin -----

async function adminPage() {
  if (!isAdmin()) {
    page('Admin', h('p', {}, 'Users, virtual hosts, permissions and definitions need the administrator tag.'));
    return;
  }
  const [users, vhosts, perms, limits, policies, opPolicies] = await Promise.all([
    api('GET', '/api/users'), api('GET', '/api/vhosts'), api('GET', '/api/permissions'), api('GET', '/api/vhost-limits'),
    api('GET', '/api/policies'), api('GET', '/api/operator-policies')]);
  state.vhosts = vhosts.map((v) => v.name);
  const userForm = h('form', { class: 'box', 'aria-label': 'Add or update a user' }, h('h2', {}, 'Add or update a user'),
    h('div', { class: 'fields' },
      field('Username', 'username', input({ required: true, autocomplete: 'off' })),
      field('Password (empty keeps the current one)', 'password', h('input', { type: 'password', autocomplete: 'new-password' })),
      field('Tags (comma-separated: administrator, monitoring, management, policymaker)', 'tags', input({}))),
    h('div', { class: 'row' }, h('button', { type: 'submit' }, 'Save user')));
  userForm.addEventListener('submit', act(async () => {
    const body = { tags: formValue(userForm, 'tags') };
    if (formValue(userForm, 'password')) body.password = formValue(userForm, 'password');
    await api('PUT', '/api/users/' + enc(formValue(userForm, 'username')), body);
    await adminPage();
  }, 'User saved.'));
  const permForm = h('form', { class: 'box', 'aria-label': 'Set permissions' }, h('h2', {}, 'Set permissions'),
    h('div', { class: 'fields' },
      field('User', 'user', select(users.map((u) => u.name))),
      field('Virtual host', 'vhost', vhostSelect()),
      field('Configure regexp', 'configure', input({ value: '.*' })),
      field('Write regexp', 'write', input({ value: '.*' })),
      field('Read regexp', 'read', input({ value: '.*' }))),
    h('div', { class: 'row' }, h('button', { type: 'submit' }, 'Set permission')));
  permForm.addEventListener('submit', act(async () => {
    await api('PUT', `/api/permissions/${enc(formValue(permForm, 'vhost'))}/${enc(formValue(permForm, 'user'))}`,
      { configure: formValue(permForm, 'configure'), write: formValue(permForm, 'write'), read: formValue(permForm, 'read') });
    await adminPage();
  }, 'Permission set.'));
  const vhostForm = h('form', { class: 'box', 'aria-label': 'Add a virtual host' }, h('h2', {}, 'Add a virtual host'),
    h('div', { class: 'row' }, field('Name', 'name', input({ required: true })), h('button', { type: 'submit' }, 'Add virtual host')));
  vhostForm.addEventListener('submit', act(async () => {
    await api('PUT', '/api/vhosts/' + enc(formValue(vhostForm, 'name')), {});
    await adminPage();
  }, 'Virtual host added.'));
  const limitForm = h('form', { class: 'box', 'aria-label': 'Set a virtual host limit' }, h('h2', {}, 'Set a virtual host limit'),
    h('div', { class: 'fields' },
      field('Virtual host', 'vhost', vhostSelect()),
      field('Limit', 'limit', select(['max-connections', 'max-queues'])),
      field('Value (negative: no limit)', 'value', input({ inputmode: 'numeric', required: true }))),
    h('div', { class: 'row' }, h('button', { type: 'submit' }, 'Set limit')));
  limitForm.addEventListener('submit', act(async () => {
    await api('PUT', `/api/vhost-limits/${enc(formValue(limitForm, 'vhost'))}/${enc(formValue(limitForm, 'limit'))}`,
      { value: Number(formValue(limitForm, 'value')) });
    await adminPage();
  }, 'Limit set.'));
  const limitOf = (v) => (limits.find((l) => l.vhost === v) || {}).value || {};
  page('Admin',
    h('h2', {}, 'Users'),
    table([
      { title: 'Name', cell: (u) => u.name },
      { title: 'Tags', cell: (u) => (u.tags.length ? u.tags.map((t) => h('span', { class: 'tag' }, t)) : h('span', { class: 'muted' }, 'none')) },
      { title: 'Can access', cell: (u) => perms.filter((p) => p.user === u.name).map((p) => p.vhost).join(', ') },
      { title: '', cell: (u) => h('button', { type: 'button', class: 'plain', onclick: act(async () => {
        if (!confirm(`Delete user ${u.name}?`)) return;
        await api('DELETE', '/api/users/' + enc(u.name));
        await adminPage();
      }, 'User deleted.') }, 'Delete') },
    ], users), userForm,
    h('h2', {}, 'Permissions'),
    table([
      { title: 'User', cell: (p) => p.user }, { title: 'Vhost', cell: (p) => p.vhost },
      { title: 'Configure', cell: (p) => p.configure }, { title: 'Write', cell: (p) => p.write }, { title: 'Read', cell: (p) => p.read },
      { title: '', cell: (p) => h('button', { type: 'button', class: 'plain', onclick: act(async () => {
        await api('DELETE', `/api/permissions/${enc(p.vhost)}/${enc(p.user)}`);
        await adminPage();
      }, 'Permission cleared.') }, 'Clear') },
    ], perms), permForm,
    h('h2', {}, 'Virtual hosts'),
    table([
      { title: 'Name', cell: (v) => v.name },
      { title: 'Messages', num: true, cell: (v) => num(v.messages) },
      { title: 'Limits', cell: (v) => Object.entries(limitOf(v.name)).map(([k, x]) => `${k}: ${x}`).join(', ') },
      { title: '', cell: (v) => h('button', { type: 'button', class: 'plain', onclick: act(async () => {
        if (!confirm(`Delete virtual host ${v.name} and everything in it?`)) return;
        await api('DELETE', '/api/vhosts/' + enc(v.name));
        await adminPage();
      }, 'Virtual host deleted.') }, 'Delete') },
    ], vhosts), vhostForm, limitForm,
    h('h2', {}, 'Policies'), policiesBox(policies, opPolicies),
    h('h2', {}, 'Definitions'), definitionsBox());
}

function policiesBox(policies, opPolicies) {
  const rows = policies.map((p) => ({ ...p, kind: 'policy' })).concat(opPolicies.map((p) => ({ ...p, kind: 'operator policy' })));
  const base = (p) => (p.kind === 'policy' ? '/api/policies/' : '/api/operator-policies/') + `${enc(p.vhost)}/${enc(p.name)}`;
  const form = h('form', { class: 'box', 'aria-label': 'Add or update a policy' }, h('h3', {}, 'Add or update a policy'),
    h('div', { class: 'fields' },
      field('Kind', 'kind', select(['policy', 'operator policy'])),
      field('Virtual host', 'vhost', vhostSelect()),
      field('Name', 'name', input({ required: true, autocomplete: 'off' })),
      field('Pattern (regular expression on names)', 'pattern', input({ required: true, value: '^' })),
      field('Apply to', 'applyTo', select(['queues', 'exchanges', 'all'])),
      field('Priority', 'priority', input({ inputmode: 'numeric', value: '0' })),
      field('Definition (JSON: message-ttl, expires, max-length, max-length-bytes, overflow, dead-letter-exchange, dead-letter-routing-key, alternate-exchange)',
        'definition', h('textarea', { required: true }, '{"max-length": 10000}'))),
    h('div', { class: 'row' }, h('button', { type: 'submit' }, 'Save policy')));
  form.addEventListener('submit', act(async () => {
    let definition;
    try { definition = JSON.parse(formValue(form, 'definition')); } catch (e) { throw new Error('The definition is not valid JSON: ' + e.message); }
    const p = { kind: formValue(form, 'kind'), vhost: formValue(form, 'vhost'), name: formValue(form, 'name') };
    await api('PUT', base(p), { pattern: formValue(form, 'pattern'), 'apply-to': formValue(form, 'applyTo'),
      priority: Number(formValue(form, 'priority') || 0), definition });
    await adminPage();
  }, 'Policy saved.'));
  return h('div', {},
    table([
      { title: 'Kind', cell: (p) => p.kind }, { title: 'Vhost', cell: (p) => p.vhost }, { title: 'Name', cell: (p) => p.name },
      { title: 'Pattern', cell: (p) => p.pattern }, { title: 'Apply to', cell: (p) => p['apply-to'] },
      { title: 'Definition', cell: (p) => JSON.stringify(p.definition) }, { title: 'Priority', num: true, cell: (p) => num(p.priority) },
      { title: '', cell: (p) => h('button', { type: 'button', class: 'plain', onclick: act(async () => {
        await api('DELETE', base(p));
        await adminPage();
      }, 'Policy cleared.') }, 'Clear') },
    ], rows, { empty: 'No policies: queues and exchanges run as declared.' }), form);
}

function definitionsBox() {
  const out = h('div', {});
  const exportBtn = h('button', { type: 'button', onclick: act(async () => {
    const defs = await api('GET', '/api/definitions');
    const text = JSON.stringify(defs, null, 2);
    const url = URL.createObjectURL(new Blob([text], { type: 'application/json' }));
    out.replaceChildren(
      h('p', {}, `${defs.users.length} users, ${defs.vhosts.length} vhosts, ${defs.queues.length} queues, ${defs.exchanges.length} exchanges, ${defs.bindings.length} bindings. `,
        h('a', { href: url, download: 'warren-definitions.json' }, 'Download the file')),
      h('textarea', { id: 'exported', 'aria-label': 'Exported definitions', readonly: true }, text));
  }) }, 'Export definitions');
  const importForm = h('form', { class: 'box', 'aria-label': 'Import definitions' }, h('h3', {}, 'Import definitions'),
    field('Definitions file', 'file', h('input', { type: 'file', accept: 'application/json,.json' })),
    field('or paste them', 'text', h('textarea', {})),
    h('div', { class: 'row' }, h('button', { type: 'submit' }, 'Preview import')));
  const preview = h('div', { id: 'import-preview' });
  importForm.addEventListener('submit', act(async () => {
    const file = importForm.elements.file.files[0];
    const text = file ? await file.text() : formValue(importForm, 'text');
    let defs;
    try { defs = JSON.parse(text); } catch (e) { throw new Error('The definitions are not valid JSON: ' + e.message); }
    const current = await api('GET', '/api/definitions');
    const changes = diffDefinitions(current, defs);
    const go = h('button', { type: 'button', onclick: act(async () => {
      await api('POST', '/api/definitions', defs);
      preview.replaceChildren(h('p', {}, 'Imported.'));
    }, 'Definitions imported.') }, 'Import these definitions');
    preview.replaceChildren(h('h3', {}, 'What the import would change'),
      table([
        { title: 'Kind', cell: (c) => c.kind }, { title: 'Name', cell: (c) => c.name },
        { title: 'Change', cell: (c) => h('span', { class: 'diff-' + c.change }, c.change === 'new' ? 'created' : 'changed') },
      ], changes, { empty: 'Nothing: everything in the file exists already as it is.' }),
      h('p', { class: 'muted' }, 'An import adds and updates; it deletes nothing.'), go);
  }));
  return h('div', { class: 'box' }, h('div', { class: 'row' }, exportBtn), out, importForm, preview);
}

function diffDefinitions(current, next) {
  const kinds = [
    ['users', 'user', (x) => x.name, (x) => [x.tags, x.password_hash]],
    ['vhosts', 'vhost', (x) => x.name, () => null],
    ['permissions', 'permission', (x) => `${x.user} in ${x.vhost}`, (x) => [x.configure, x.write, x.read]],
    ['exchanges', 'exchange', (x) => `${x.vhost} ${x.name}`, (x) => [x.type, x.durable, x.auto_delete, x.internal, x.arguments]],
    ['queues', 'queue', (x) => `${x.vhost} ${x.name}`, (x) => [x.durable, x.auto_delete, x.arguments]],
    ['bindings', 'binding', (x) => `${x.vhost} ${x.source} → ${x.destination_type} ${x.destination} (${x.routing_key})`, (x) => x.arguments],
    ['policies', 'policy', (x) => `${x.vhost} ${x.name}`, (x) => [x.pattern, x['apply-to'], x.priority, x.definition]],
  ];
  const out = [];
  for (const [key, kind, id, body] of kinds) {
    const have = new Map((current[key] || []).map((x) => [id(x), JSON.stringify(body(x))]));
    for (const x of next[key] || []) {
      const k = id(x);
      if (!have.has(k)) out.push({ kind, name: k, change: 'new' });
      else if (have.get(k) !== JSON.stringify(body(x)) && kind !== 'binding') out.push({ kind, name: k, change: 'changed' });
    }
  }
  return out;
}

// ----- start -----

window.addEventListener('hashchange', route);
window.addEventListener('resize', () => Object.values(overviewCharts).forEach((c) => c.draw()));
document.addEventListener('DOMContentLoaded', async () => {
  document.getElementById('logout').addEventListener('click', act(async () => {
    await api('POST', '/api/logout');
    state.me = null;
    state.csrf = '';
    showLogin();
    notice('Logged out.', true);
  }));
  try {
    await start(await api('GET', '/api/session'));
  } catch (_) {
    showLogin();
  }
});
