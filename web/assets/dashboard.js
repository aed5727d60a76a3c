// Dashboard: who is connected right now, how fast data moves, what just
// happened, and where the gateway listens.

import { api, metricTotals } from './api.js';
import { LiveChart } from './chart.js';
import { badge, clear, errorText, every, fill, fmtBytes, fmtDuration, fmtRate, h, pageHeader, since, table, timeCell } from './ui.js';
import { eventPath, outcomeBadge } from './audit.js';

const PROTOCOLS = ['ftp', 'ftps', 'sftp'];
const POLL_MS = 2000;
/** Transfers per second is averaged over this long. */
const TPS_WINDOW_MS = 10000;

export function render(main) {
  const counts = Object.fromEntries(PROTOCOLS.map((p) => [p, h('span', { class: 'stat-value' }, '–')]));
  const total = h('span', { class: 'count' });
  const upRate = h('span', { class: 'stat-value' }, '–');
  const downRate = h('span', { class: 'stat-value' }, '–');
  const tpsNow = h('span', { class: 'stat-value' }, '–');
  const bytesCanvas = h('canvas', { class: 'chart', role: 'img', 'aria-label': 'Bytes per second, upload and download, up to the last five minutes' });
  const tpsCanvas = h('canvas', { class: 'chart', role: 'img', 'aria-label': 'Finished transfers per second, up to the last five minutes' });
  const liveBox = h('div', { class: 'live-sessions' });
  const eventsBox = h('div', {});
  const listenersBox = h('div', {});
  const nodeLine = h('p', { class: 'muted' });
  const problem = h('div', {});

  main.append(
    pageHeader('Dashboard', 'Live view of this gateway; refreshes every 2 seconds.'),
    problem,
    h(
      'section',
      { class: 'stats', 'aria-label': 'Live sessions and rates' },
      PROTOCOLS.map((p) => stat(`${p.toUpperCase()} sessions`, counts[p])),
      stat('Upload', upRate),
      stat('Download', downRate),
      stat('Transfers / s', tpsNow),
    ),
    h(
      'div',
      { class: 'grid two' },
      h('section', { class: 'card' }, h('h2', {}, 'Throughput'), legend([['Upload', 'c1'], ['Download', 'c2']]), bytesCanvas),
      h('section', { class: 'card' }, h('h2', {}, 'Transfers per second'), legend([['Finished transfers (10 s average)', 'c3']]), tpsCanvas),
    ),
    h(
      'div',
      { class: 'grid two' },
      h('section', { class: 'card' }, h('h2', {}, 'Connected now ', total), liveBox),
      h('section', { class: 'card' }, h('h2', {}, 'Listeners'), nodeLine, listenersBox),
    ),
    h('section', { class: 'card' }, h('div', { class: 'card-head' }, h('h2', {}, 'Recent events'), h('a', { href: '#/audit' }, 'Open the audit log')), eventsBox),
  );

  const bytesChart = new LiveChart(bytesCanvas, {
    series: [{ name: 'Upload', color: '--chart-1' }, { name: 'Download', color: '--chart-2' }],
    windowSecs: 300,
    unit: 1024,
    floor: 1024,
    format: (v) => fmtRate(v),
  });
  const tpsChart = new LiveChart(tpsCanvas, {
    series: [{ name: 'Transfers', color: '--chart-3' }],
    windowSecs: 300,
    floor: 1,
    format: (v) => (v >= 10 ? v.toFixed(0) : v >= 1 ? v.toFixed(1) : v.toFixed(2)),
  });

  let last = null;
  // Finished-transfer counts over the last few seconds, for a steadier rate.
  const history = [];
  const stopLive = every(POLL_MS, async () => {
    try {
      const [sessions, totals] = await Promise.all([api.get('/api/v1/sessions'), metricTotals()]);
      clear(problem);
      const items = sessions.items || [];
      total.textContent = `(${items.length})`;
      for (const p of PROTOCOLS) counts[p].textContent = String(items.filter((s) => s.protocol === p).length);
      // The counters grow when a transfer ends; adding the bytes of the
      // transfers in flight makes the rate follow the data as it moves.
      const inFlight = (direction) => items.reduce((sum, s) => sum + (s.transfer && s.transfer.direction === direction ? s.transfer.bytes : 0), 0);
      const now = performance.now();
      const moved = { up: totals.bytesUp + inFlight('upload'), down: totals.bytesDown + inFlight('download') };
      history.push({ at: now, transfers: totals.transfers });
      while (history.length > 2 && now - history[0].at > TPS_WINDOW_MS) history.shift();
      if (last) {
        const dt = (now - last.at) / 1000;
        const up = Math.max(0, (moved.up - last.moved.up) / dt);
        const down = Math.max(0, (moved.down - last.moved.down) / dt);
        const oldest = history[0];
        const tps = now > oldest.at ? Math.max(0, ((totals.transfers - oldest.transfers) * 1000) / (now - oldest.at)) : 0;
        upRate.textContent = fmtRate(up);
        downRate.textContent = fmtRate(down);
        tpsNow.textContent = tps.toFixed(tps < 10 ? 1 : 0);
        bytesChart.push([up, down]);
        tpsChart.push([tps]);
      }
      last = { at: now, moved };
      fill(liveBox, 
        table(
          [
            { label: 'Account', cell: (s) => h('a', { href: `#/accounts/edit/${encodeURIComponent(s.username)}` }, s.username) },
            { label: 'Protocol', cell: (s) => badge(s.protocol.toUpperCase(), 'proto') },
            { label: 'For', cell: (s) => since(s.started_at) },
            { label: 'Doing', cell: (s) => (s.transfer ? `${s.transfer.direction} ${s.transfer.path}` : 'idle'), class: 'path' },
          ],
          items.slice(0, 8),
          { empty: 'Nobody is connected.', caption: 'Connected sessions' },
        ),
      );
      if (items.length > 8) liveBox.append(h('p', {}, h('a', { href: '#/sessions' }, `All ${items.length} sessions`)));
    } catch (e) {
      fill(problem, h('p', { class: 'notice error', role: 'alert' }, errorText(e)));
    }
  });

  const stopSlow = every(5000, async () => {
    const [events, status] = await Promise.all([api.get('/api/v1/events?limit=10'), api.get('/api/v1/status')]);
    fill(eventsBox, 
      table(
        [
          { label: 'Time', cell: (e) => timeCell(e.time) },
          { label: 'Event', cell: (e) => e.kind },
          { label: 'Account', cell: (e) => e.username },
          { label: 'Path', cell: (e) => eventPath(e), class: 'path' },
          { label: 'Bytes', cell: (e) => (e.bytes === null || e.bytes === undefined ? '' : fmtBytes(e.bytes)), class: 'num' },
          { label: 'Outcome', cell: (e) => outcomeBadge(e.outcome) },
        ],
        events.items || [],
        { empty: 'No events yet.', caption: 'Recent events' },
      ),
    );
    nodeLine.textContent = `Node ${status.node} · version ${status.version} · up ${fmtDuration(status.uptime_secs)}`;
    fill(listenersBox, listenerList(status.listeners || []));
  });

  return () => {
    stopLive();
    stopSlow();
    bytesChart.destroy();
    tpsChart.destroy();
  };
}

function stat(label, valueEl) {
  return h('div', { class: 'stat card' }, h('span', { class: 'stat-label' }, label), valueEl);
}

function legend(items) {
  return h(
    'ul',
    { class: 'legend' },
    items.map(([name, cls]) => h('li', {}, h('span', { class: `swatch ${cls}`, 'aria-hidden': 'true' }), name)),
  );
}

export function listenerList(listeners) {
  return table(
    [
      { label: 'Protocol', cell: (l) => badge(l.protocol.toUpperCase(), 'proto') },
      { label: 'Address', cell: (l) => h('code', {}, l.address) },
      { label: 'State', cell: () => badge('listening', 'ok') },
    ],
    listeners,
    { empty: 'No listeners.', caption: 'Listeners' },
  );
}
