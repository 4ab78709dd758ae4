// memcache manager dashboard: polls /ui/api/dashboard every 5 s and redraws
// the six charts (Chart.js, vendored as chart.umd.min.js), the pool table,
// the region map, the scaler's decisions and the raft status, without a
// page reload. Values from the server are put in the page as text, never as
// HTML.
(function () {
  'use strict';

  var POLL_MS = 5000;
  var palette = ['#2563eb', '#16a34a', '#d97706', '#9333ea', '#0891b2', '#db2777', '#65a30d', '#dc2626'];

  function bytes(n) {
    if (n === null || n === undefined) return '—';
    var units = ['B', 'KB', 'MB', 'GB', 'TB'];
    var i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n : n.toFixed(n < 10 ? 1 : 0)) + ' ' + units[i];
  }
  function count(n) { return n === null || n === undefined ? '—' : Number(n).toLocaleString(); }
  function pct(r) { return r === null || r === undefined ? '—' : (r * 100).toFixed(1) + '%'; }
  function clock(t) { return new Date(t).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }); }

  var specs = [
    { id: 'nodes', key: 'nodes', label: 'Nodes', color: '#2563eb', step: true, fmt: count, min: 0, suggestedMax: 2, integer: true },
    { id: 'miss', key: 'miss_rate', label: 'Miss rate', color: '#dc2626', fmt: pct, min: 0, max: 1 },
    { id: 'hit', key: 'hit_rate', label: 'Hit rate', color: '#16a34a', fmt: pct, min: 0, max: 1 },
    { id: 'items', key: 'items', label: 'Items', color: '#9333ea', fmt: count, min: 0 },
    { id: 'bytes', key: 'bytes', label: 'Size', color: '#ea580c', fmt: bytes, min: 0 },
    { id: 'requests', key: 'requests', label: 'Requests / min', color: '#0891b2', fmt: count, min: 0 }
  ];

  var charts = {};
  function makeChart(spec) {
    var canvas = document.getElementById('chart-' + spec.id);
    if (!canvas || typeof Chart === 'undefined') return null;
    return new Chart(canvas, {
      type: 'line',
      data: { labels: [], datasets: [{
        label: spec.label, data: [], borderColor: spec.color, backgroundColor: spec.color + '22',
        fill: true, stepped: spec.step ? 'before' : false, tension: spec.step ? 0 : 0.25,
        pointRadius: 3, pointHoverRadius: 5, borderWidth: 2, spanGaps: false
      }] },
      options: {
        responsive: true, maintainAspectRatio: false, animation: false,
        interaction: { mode: 'index', intersect: false },
        plugins: {
          legend: { display: false },
          tooltip: { callbacks: { label: function (ctx) { return spec.label + ': ' + spec.fmt(ctx.parsed.y); } } }
        },
        scales: {
          x: { ticks: { maxTicksLimit: 7, maxRotation: 0 }, grid: { display: false } },
          y: {
            min: spec.min, max: spec.max, suggestedMax: spec.suggestedMax, beginAtZero: true,
            ticks: { maxTicksLimit: 5, precision: spec.integer ? 0 : undefined, callback: function (v) { return spec.fmt(v); } }
          }
        }
      }
    });
  }

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    if (attrs) for (var k in attrs) if (Object.prototype.hasOwnProperty.call(attrs, k)) e.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function setText(id, text) { var e = document.getElementById(id); if (e) e.textContent = String(text); }

  function colors(pool) {
    var m = {};
    pool.forEach(function (n, i) { m[n.id] = palette[i % palette.length]; });
    return m;
  }

  function renderCharts(d) {
    var labels = d.series.times.map(clock);
    specs.forEach(function (spec) {
      if (!charts[spec.id]) charts[spec.id] = makeChart(spec);
      var c = charts[spec.id];
      if (!c) return;
      c.data.labels = labels;
      c.data.datasets[0].data = d.series[spec.key];
      c.update('none');
    });
    var me = document.getElementById('metrics-error');
    if (me) { me.hidden = !d.metrics_error; me.textContent = d.metrics_error ? 'Metrics: ' + d.metrics_error : ''; }
  }

  function renderPool(d, col) {
    var body = document.getElementById('pool-body');
    if (!body) return;
    body.replaceChildren();
    if (d.pool.length === 0) {
      var tr = el('tr'); tr.appendChild(el('td', { colspan: 7, 'class': 'muted' }, 'The pool has no nodes yet.'));
      body.appendChild(tr);
      return;
    }
    d.pool.forEach(function (n) {
      var tr = el('tr', { 'data-node': n.id });
      var id = el('td'); id.appendChild(el('span', { 'class': 'swatch' })); id.lastChild.style.background = col[n.id];
      id.appendChild(el('strong', null, n.id));
      tr.appendChild(id);
      tr.appendChild(el('td', null, n.http));
      tr.appendChild(el('td', { title: n.regions.join(', ') }, n.regions.length + ' (' + n.regions.map(function (r) { return r.toString(16); }).join(' ') + ')'));
      tr.appendChild(el('td', { 'class': 'num' }, count(n.items)));
      tr.appendChild(el('td', { 'class': 'num' }, bytes(n.bytes)));
      tr.appendChild(el('td', { 'class': n.health === 'ok' ? 'health-ok' : 'health-bad' }, n.health));
      tr.appendChild(el('td', { 'class': 'handoff' + (n.handoff ? '' : ' muted') }, n.handoff || '—'));
      body.appendChild(tr);
    });
  }

  function renderRegions(d, col) {
    var box = document.getElementById('regions');
    if (!box) return;
    box.replaceChildren();
    d.regions.forEach(function (owner, r) {
      var cell = el('div', { 'class': owner ? 'region' : 'region unowned', title: 'region ' + r + ': ' + (owner || 'no owner') });
      if (owner) cell.style.background = col[owner] || '#475569';
      cell.appendChild(el('span', { 'class': 'rid' }, r.toString(16)));
      cell.appendChild(el('span', { 'class': 'owner' }, owner || '—'));
      box.appendChild(cell);
    });
  }

  function renderDecisions(d) {
    var body = document.getElementById('decisions-body');
    if (!body) return;
    body.replaceChildren();
    if (d.decisions.length === 0) {
      var tr = el('tr'); tr.appendChild(el('td', { colspan: 7, 'class': 'muted' }, 'No decisions yet: the scaler records one every interval while it runs.'));
      body.appendChild(tr);
      return;
    }
    d.decisions.forEach(function (x) {
      var tr = el('tr');
      tr.appendChild(el('td', { title: x.time, 'class': 'nowrap' }, new Date(x.time).toLocaleTimeString()));
      tr.appendChild(el('td', null, x.mode));
      tr.appendChild(el('td', { 'class': 'nowrap' }, x.nodes + ' → ' + x.target));
      // A discounted window (a resize, its warm-up or a handoff in it) is
      // not the steady miss rate of the size: marked, and not acted upon.
      var miss = el('td', { 'class': 'num' + (x.discounted ? ' discounted' : '') }, pct(x.miss_rate));
      if (x.discounted) {
        miss.title = 'discounted (' + x.discounted + '): not the steady miss rate of ' + x.nodes + ' nodes';
        miss.appendChild(el('span', { 'class': 'tag warmup' }, 'warm-up'));
      }
      tr.appendChild(miss);
      tr.appendChild(renderEstimate(x));
      var act = x.action + (x.action !== 'none' ? (x.applied ? ' ✓' : ' ✗') : '');
      tr.appendChild(el('td', { 'class': 'nowrap action-' + x.action }, act));
      tr.appendChild(el('td', null, x.reason + (x.error ? ' — error: ' + x.error : '')));
      body.appendChild(tr);
    });
  }

  // renderEstimate returns the cell of the shrink guard's estimate: the
  // miss rate at the smaller size and where it comes from, "none" when the
  // guard had no measurement at that size, or a dash when no shrink was
  // checked.
  function renderEstimate(x) {
    if (!x.estimate_nodes) return el('td', { 'class': 'num muted estimate' }, '—');
    var td = el('td', { 'class': 'num estimate' });
    if (x.estimate === null || x.estimate === undefined) {
      td.appendChild(el('span', { 'class': 'muted' }, 'none at ' + x.estimate_nodes));
      td.title = 'no steady measurement at ' + x.estimate_nodes + ' nodes: the shrink was taken';
      return td;
    }
    td.appendChild(document.createTextNode(pct(x.estimate) + ' at ' + x.estimate_nodes));
    td.appendChild(el('span', { 'class': 'small muted estimate-from' }, x.estimate_from));
    td.title = x.estimate_from;
    return td;
  }

  function renderRaft(d) {
    var s = d.replica;
    setText('replica-name', s.id);
    var badge = document.getElementById('raft-state');
    if (badge) { badge.textContent = s.state; badge.className = 'badge state-' + String(s.state).toLowerCase(); }
    setText('raft-id', s.id);
    setText('raft-state-text', s.state);
    setText('raft-leader', s.leader.id ? s.leader.id + ' (' + s.leader.address + ')' : 'none known');
    setText('raft-term', s.term);
    setText('raft-commit', s.commit_index);
    setText('raft-applied', s.applied_index);
    setText('raft-contact', s.last_contact || '—');
    var peers = document.getElementById('raft-peers');
    if (peers) {
      peers.replaceChildren();
      s.peers.forEach(function (p) {
        var li = el('li');
        li.appendChild(el('strong', null, p.id));
        li.appendChild(document.createTextNode(' '));
        var tag = p.address + ' · ' + p.suffrage + (p.id === s.leader.id ? ' · leader' : '') + (p.id === s.id ? ' · this replica' : '');
        li.appendChild(el('span', { 'class': 'muted' }, tag));
        peers.appendChild(li);
      });
    }
  }

  function renderControls(d) {
    var n = d.pool.length, auto = d.scaling.mode === 'auto';
    setText('sum-nodes', n);
    setText('sum-mode', d.scaling.mode);
    setText('sum-cache', d.cache.capacity_mb + ' MB · ' + d.cache.policy);
    setText('sum-epoch', d.epoch);
    setText('pool-size', n);
    var grow = document.getElementById('grow'), shrink = document.getElementById('shrink');
    if (grow) grow.disabled = auto || n >= d.max_nodes;
    if (shrink) shrink.disabled = auto || n <= d.min_nodes;
    setText('manual-hint', auto ? 'The auto-scaler sizes the pool in automatic mode; switch to manual to resize by hand.' : '');
  }

  var state = { updates: 0, last: null, error: null };
  window.memcacheDashboard = { charts: charts, state: state, refresh: refresh };

  function refresh() {
    return fetch('/ui/api/dashboard', { credentials: 'same-origin', cache: 'no-store', headers: { Accept: 'application/json' } })
      .then(function (resp) {
        if (resp.status === 401) { window.location.assign('/ui/login'); throw new Error('logged out'); }
        if (!resp.ok) throw new Error('HTTP ' + resp.status);
        return resp.json();
      })
      .then(function (d) {
        var col = colors(d.pool);
        renderCharts(d);
        renderPool(d, col);
        renderRegions(d, col);
        renderDecisions(d);
        renderRaft(d);
        renderControls(d);
        state.updates++;
        state.last = d;
        state.error = null;
        var u = document.getElementById('updated');
        if (u) { u.textContent = 'updated ' + new Date().toLocaleTimeString(); u.classList.remove('stale'); }
      })
      .catch(function (err) {
        state.error = String(err && err.message || err);
        var u = document.getElementById('updated');
        if (u) { u.textContent = 'update failed: ' + state.error + ' (retrying)'; u.classList.add('stale'); }
      });
  }

  function loop() { refresh().then(function () { window.setTimeout(loop, POLL_MS); }); }
  loop();
})();
