// Status: version, uptime, node and listeners of this gateway.

import { api } from './api.js';
import { errorText, every, fill, fmtDuration, h, notice, pageHeader } from './ui.js';
import { listenerList } from './dashboard.js';

export function render(main) {
  const box = h('div', {});
  main.append(pageHeader('Status', 'What runs where.'), box);
  return every(5000, async () => {
    try {
      const s = await api.get('/api/v1/status');
      fill(box, 
        h(
          'section',
          { class: 'stats' },
          h('div', { class: 'stat card' }, h('span', { class: 'stat-label' }, 'Version'), h('span', { class: 'stat-value' }, s.version)),
          h('div', { class: 'stat card' }, h('span', { class: 'stat-label' }, 'Uptime'), h('span', { class: 'stat-value' }, fmtDuration(s.uptime_secs))),
          h('div', { class: 'stat card' }, h('span', { class: 'stat-label' }, 'Node'), h('span', { class: 'stat-value' }, s.node)),
        ),
        h('section', { class: 'card' }, h('h2', {}, 'Listeners'), listenerList(s.listeners || [])),
        h(
          'section',
          { class: 'card' },
          h('h2', {}, 'For scripts'),
          h('p', {}, 'The REST API the console uses is described at ', h('a', { href: '/api/v1/openapi.json' }, '/api/v1/openapi.json'), '; Prometheus metrics are at ', h('a', { href: '/metrics' }, '/metrics'), '.'),
        ),
      );
    } catch (e) {
      fill(box, notice(errorText(e), 'error'));
    }
  });
}
