// Bans: addresses the gateway refuses after repeated failed logins, and
// lifting one. Servers without the ban API say so instead of failing.

import { ApiError, api, enc } from './api.js';
import { confirmAction, errorText, fill, h, notice, pageHeader, table, timeCell, toast } from './ui.js';

export function render(main) {
  const box = h('div', {});
  const refresh = h('button', { class: 'btn ghost', type: 'button', onclick: () => load() }, 'Refresh');
  main.append(pageHeader('Bans', 'Source addresses refused after too many failed logins.', refresh), box);

  async function load() {
    let res;
    try {
      res = await api.get('/api/v1/bans');
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) {
        refresh.hidden = true;
        fill(box, notice('Bans are not available on this server version.', 'info'));
      } else {
        fill(box, notice(errorText(e), 'error'));
      }
      return;
    }
    fill(box, 
      table(
        [
          { label: 'Address', cell: (b) => h('code', {}, b.ip) },
          { label: 'Failed logins', cell: (b) => String(b.failures ?? '—'), class: 'num' },
          { label: 'Banned at', cell: (b) => timeCell(b.banned_at) },
          { label: 'Until', cell: (b) => timeCell(b.expires_at) },
          { label: 'Action', cell: (b) => h('button', { class: 'btn ghost small', type: 'button', 'aria-label': `Lift the ban on ${b.ip}`, onclick: () => lift(b) }, 'Lift') },
        ],
        res.items || [],
        { empty: 'No address is banned.', caption: 'Bans' },
      ),
    );
  }

  async function lift(b) {
    if (!(await confirmAction(`Lift the ban on ${b.ip}?`, 'The address may try to log in again at once.', 'Lift ban', false))) return;
    try {
      await api.del(`/api/v1/bans/${enc(b.ip)}`);
      toast(`Ban on ${b.ip} lifted.`);
      load();
    } catch (e) {
      toast(errorText(e), 'error');
    }
  }

  load();
  return null;
}
