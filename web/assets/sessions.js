// Sessions: everyone connected now, what they are moving and how fast; an
// admin can end a session (its transfer is aborted).

import { api, enc } from './api.js';
import { badge, clear, confirmAction, errorText, every, fill, fmtBytes, fmtRate, h, notice, pageHeader, since, table, timeCell, toast } from './ui.js';

export function render(main) {
  // Not a live region: it refreshes every 2 seconds.
  const box = h('div', {});
  const problem = h('div', {});
  main.append(pageHeader('Sessions', 'Live sessions of every protocol on this node; refreshes every 2 seconds.'), problem, box);
  // Bytes seen per session and transfer at the previous poll, for the rate.
  let previous = new Map();

  const stop = every(2000, async () => {
    let res;
    try {
      res = await api.get('/api/v1/sessions');
      clear(problem);
    } catch (e) {
      fill(problem, notice(errorText(e), 'error'));
      return;
    }
    const now = performance.now();
    const seen = new Map();
    const rows = (res.items || []).map((s) => {
      let rate = null;
      if (s.transfer) {
        const key = `${s.id}\u0000${s.transfer.path}\u0000${s.transfer.direction}`;
        const before = previous.get(key);
        if (before && s.transfer.bytes >= before.bytes) rate = ((s.transfer.bytes - before.bytes) * 1000) / (now - before.at);
        else if (s.transfer.elapsed_secs > 0) rate = s.transfer.bytes / s.transfer.elapsed_secs;
        seen.set(key, { bytes: s.transfer.bytes, at: now });
      }
      return { ...s, rate };
    });
    previous = seen;
    // Keep focus on the row's button across refreshes when it still exists.
    const focusedId = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.session : null;
    fill(box, 
      table(
        [
          { label: 'Account', cell: (s) => h('a', { href: `#/accounts/edit/${enc(s.username)}`, class: 'strong' }, s.username) },
          { label: 'Protocol', cell: (s) => badge(s.protocol.toUpperCase(), 'proto') },
          { label: 'From', cell: (s) => h('code', {}, s.remote_addr) },
          { label: 'Connected', cell: (s) => h('span', {}, timeCell(s.started_at), h('span', { class: 'muted' }, ` (${since(s.started_at)})`)) },
          {
            label: 'Transfer',
            cell: (s) =>
              s.transfer
                ? h('span', {}, badge(s.transfer.direction === 'upload' ? 'Upload' : 'Download', s.transfer.direction === 'upload' ? 'up' : 'down'), ' ', h('span', { class: 'path' }, s.transfer.path), h('span', { class: 'muted' }, ` ${fmtBytes(s.transfer.bytes)}`))
                : h('span', { class: 'muted' }, 'idle'),
          },
          { label: 'Rate', cell: (s) => (s.rate === null ? '—' : fmtRate(s.rate)), class: 'num' },
          {
            label: 'Action',
            cell: (s) =>
              h('button', { class: 'btn danger small', type: 'button', dataset: { session: s.id }, 'aria-label': `Disconnect ${s.username} (${s.protocol} from ${s.remote_addr})`, onclick: () => kick(s) }, 'Disconnect'),
          },
        ],
        rows,
        { empty: 'Nobody is connected right now.', caption: 'Live sessions' },
      ),
    );
    if (focusedId) {
      const again = box.querySelector(`button[data-session="${CSS.escape(focusedId)}"]`);
      if (again) again.focus();
    }
  });

  async function kick(s) {
    const ok = await confirmAction(`Disconnect ${s.username}?`, `The ${s.protocol.toUpperCase()} session from ${s.remote_addr} ends now; a transfer in progress is aborted.`, 'Disconnect');
    if (!ok) return;
    try {
      await api.del(`/api/v1/sessions/${enc(s.id)}`);
      toast(`Disconnected ${s.username}.`);
    } catch (e) {
      toast(errorText(e), 'error');
    }
  }

  return stop;
}
