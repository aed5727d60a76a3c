// Audit log: every login, upload, download, delete, rename… newest first,
// filtered by account, kind and time, and exported as CSV.

import { api, withQuery } from './api.js';
import { badge, download, errorText, field, fill, fmtBytes, fromLocalInput, h, notice, pageHeader, table, timeCell, toast } from './ui.js';

const KINDS = ['login', 'logout', 'upload', 'download', 'delete', 'rename', 'mkdir', 'rmdir', 'setstat', 'link'];
const PAGE = 100;
/** CSV export reads at most this many events. */
const EXPORT_LIMIT = 100000;
const CSV_COLUMNS = ['id', 'time', 'kind', 'username', 'protocol', 'remote_addr', 'path', 'target_path', 'bytes', 'duration_ms', 'outcome', 'sha256', 'message', 'node', 'session_id'];

export function outcomeBadge(outcome) {
  return badge(outcome, outcome === 'ok' ? 'ok' : outcome === 'denied' ? 'warn' : 'off');
}

export function eventPath(e) {
  if (!e.path) return '';
  return e.target_path ? `${e.path} → ${e.target_path}` : e.path;
}

export function render(main) {
  const username = h('input', { name: 'username', autocomplete: 'off', spellcheck: 'false', autocapitalize: 'none' });
  const kind = h('select', { name: 'kind' }, h('option', { value: '' }, 'Any'), KINDS.map((k) => h('option', { value: k }, k)));
  const sinceInput = h('input', { type: 'datetime-local', name: 'since' });
  const untilInput = h('input', { type: 'datetime-local', name: 'until' });
  const results = h('div', {});
  const more = h('button', { class: 'btn ghost', type: 'button', hidden: true }, 'Load older events');
  const exportButton = h('button', { class: 'btn ghost', type: 'button' }, 'Export CSV');
  let rows = [];
  let cursor = null;

  main.append(
    pageHeader('Audit log', 'What every account did, newest first.', exportButton),
    h(
      'form',
      { class: 'card filters', role: 'search', onsubmit: (ev) => { ev.preventDefault(); load(true); } },
      field('Account', username),
      field('Kind', kind),
      field('From', sinceInput),
      field('Until', untilInput),
      h('div', { class: 'filter-actions' }, h('button', { class: 'btn primary', type: 'submit' }, 'Apply'), h('button', { class: 'btn ghost', type: 'reset' }, 'Clear')),
    ),
    results,
    h('div', { class: 'center' }, more),
  );
  main.querySelector('form.filters').addEventListener('reset', () => setTimeout(() => load(true), 0));

  function query(extra) {
    return withQuery('/api/v1/events', {
      username: username.value.trim(),
      kind: kind.value,
      since: fromLocalInput(sinceInput.value),
      until: fromLocalInput(untilInput.value),
      ...extra,
    });
  }

  async function load(fresh) {
    if (fresh) {
      rows = [];
      cursor = null;
    }
    let res;
    try {
      res = await api.get(query({ limit: PAGE, cursor }));
    } catch (e) {
      fill(results, notice(errorText(e), 'error'));
      return;
    }
    rows = rows.concat(res.items || []);
    cursor = res.next_cursor || null;
    more.hidden = !cursor;
    fill(results, 
      table(
        [
          { label: 'Time', cell: (e) => timeCell(e.time) },
          { label: 'Event', cell: (e) => e.kind },
          { label: 'Account', cell: (e) => e.username },
          { label: 'Protocol', cell: (e) => (e.protocol || '').toUpperCase() },
          { label: 'From', cell: (e) => e.remote_addr },
          { label: 'Path', cell: (e) => eventPath(e), class: 'path' },
          { label: 'Bytes', cell: (e) => (e.bytes === null || e.bytes === undefined ? '' : fmtBytes(e.bytes)), class: 'num' },
          { label: 'Outcome', cell: (e) => h('span', {}, outcomeBadge(e.outcome), e.message ? h('span', { class: 'muted' }, ` ${e.message}`) : null) },
          { label: 'SHA-256', cell: (e) => (e.sha256 ? h('code', { title: e.sha256, class: 'hash' }, `${e.sha256.slice(0, 12)}…`) : '') },
        ],
        rows,
        { empty: 'No event matches.', caption: 'Audit events' },
      ),
    );
  }

  more.addEventListener('click', () => load(false));

  exportButton.addEventListener('click', async () => {
    exportButton.disabled = true;
    const label = exportButton.textContent;
    try {
      const all = [];
      let next = null;
      do {
        exportButton.textContent = `Exporting… ${all.length}`;
        const res = await api.get(query({ limit: 500, cursor: next }));
        all.push(...(res.items || []));
        next = res.next_cursor || null;
      } while (next && all.length < EXPORT_LIMIT);
      const stamp = new Date().toISOString().replace(/[:.]/g, '-');
      download(`dropgate-audit-${stamp}.csv`, toCsv(all), 'text/csv;charset=utf-8');
      toast(`Exported ${all.length} event${all.length === 1 ? '' : 's'}${next ? ' (limit reached)' : ''}.`);
    } catch (e) {
      toast(errorText(e), 'error');
    } finally {
      exportButton.disabled = false;
      exportButton.textContent = label;
    }
  });

  load(true);
  return null;
}

/** RFC 4180 CSV; a cell a spreadsheet would run as a formula gets a leading apostrophe. */
export function toCsv(events) {
  const cell = (v) => {
    if (v === null || v === undefined) return '';
    let s = String(v);
    if (/^[=+\-@\t\r]/.test(s)) s = `'${s}`;
    return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  };
  const lines = [CSV_COLUMNS.join(',')];
  for (const e of events) lines.push(CSV_COLUMNS.map((c) => cell(e[c])).join(','));
  return `${lines.join('\r\n')}\r\n`;
}
