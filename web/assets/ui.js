// Small DOM helpers. Everything that comes from the server or the operator
// is put in the page as text (textContent, text nodes, attribute values),
// never parsed as HTML.

/**
 * h('button', {class: 'btn', onclick: fn, type: 'button'}, 'Save')
 * Strings and numbers among the children become text nodes; null and false
 * are skipped; arrays are flattened.
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = String(value);
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (key === 'value') el.value = value;
    else if (key === 'checked' || key === 'disabled' || key === 'hidden' || key === 'required' || key === 'readOnly' || key === 'multiple') el[key] = Boolean(value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.append(c);
    else el.append(document.createTextNode(String(c)));
  }
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

/** Replaces the children of `el` (null and false are skipped, as in h). */
export function fill(el, ...children) {
  clear(el);
  append(el, children);
  return el;
}

let idCounter = 0;
export function uid(prefix = 'f') {
  idCounter += 1;
  return `${prefix}-${idCounter}`;
}

/** A labelled form control: <div class="field"><label for>…</label>control<hint></div>. */
export function field(label, control, hint) {
  // The label names the form control itself, also when it comes wrapped
  // with buttons or a unit selector.
  const input = control.matches('input, select, textarea') ? control : control.querySelector('input, select, textarea') || control;
  if (!input.id) input.id = uid('in');
  const parts = [h('label', { for: input.id }, label), control];
  if (hint) {
    const hintEl = h('p', { class: 'hint', id: uid('hint') }, hint);
    input.setAttribute('aria-describedby', hintEl.id);
    parts.push(hintEl);
  }
  return h('div', { class: 'field' }, parts);
}

/** A page header: title, optional subtitle and action buttons. */
export function pageHeader(title, subtitle, ...actions) {
  return h(
    'div',
    { class: 'page-header' },
    h('div', {}, h('h1', { tabindex: '-1', class: 'page-title' }, title), subtitle ? h('p', { class: 'muted' }, subtitle) : null),
    actions.length ? h('div', { class: 'actions' }, actions) : null,
  );
}

/**
 * A table whose cells carry their column name, so on a phone each row
 * becomes a card. columns: [{label, cell: (row) => Node|string, class}]
 */
export function table(columns, rows, { empty = 'Nothing here yet.', caption } = {}) {
  if (!rows.length) return h('p', { class: 'empty' }, empty);
  return h(
    'div',
    { class: 'table-wrap' },
    h(
      'table',
      { class: 'data' },
      caption ? h('caption', { class: 'sr-only' }, caption) : null,
      h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col', class: c.class }, c.label)))),
      h(
        'tbody',
        {},
        rows.map((row) =>
          h('tr', {}, columns.map((c) => h('td', { class: c.class, 'data-label': c.label }, c.cell(row)))),
        ),
      ),
    ),
  );
}

export function badge(text, kind = '') {
  return h('span', { class: `badge ${kind}` }, text);
}

// ------------------------------------------------------------------ toasts

export function toast(message, kind = 'ok') {
  const box = document.getElementById('toasts');
  if (!box) return;
  const el = h('div', { class: `toast ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, message);
  box.append(el);
  setTimeout(() => el.remove(), kind === 'error' ? 8000 : 4000);
}

export function errorText(e) {
  if (!e) return 'Unknown error';
  if (e.field) return `${e.field}: ${e.message.replace(new RegExp(`^${escapeRegExp(e.field)}: `), '')}`;
  return e.message || String(e);
}

function escapeRegExp(s) {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** A notice in the page: role=alert for errors. */
export function notice(message, kind = 'info') {
  return h('p', { class: `notice ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, message);
}

// ----------------------------------------------------------------- dialogs

/**
 * A modal dialog (native <dialog>: focus stays inside, Escape cancels).
 * body: nodes; buttons: [{label, value, class}]. Resolves to the value of
 * the button pressed, or null when cancelled.
 */
export function modal(title, body, buttons) {
  return new Promise((resolve) => {
    const titleId = uid('dlg');
    const dlg = h(
      'dialog',
      { class: 'modal', 'aria-labelledby': titleId },
      h(
        'form',
        { method: 'dialog' },
        h('h2', { id: titleId }, title),
        h('div', { class: 'modal-body' }, body),
        h(
          'div',
          { class: 'actions' },
          buttons.map((b) => h('button', { class: `btn ${b.class || ''}`, value: b.value, type: 'submit' }, b.label)),
        ),
      ),
    );
    dlg.addEventListener('close', () => {
      const v = dlg.returnValue;
      dlg.remove();
      resolve(v && v !== 'cancel' ? v : null);
    });
    document.body.append(dlg);
    dlg.showModal();
  });
}

/** Asks before something irreversible; resolves true when confirmed. */
export async function confirmAction(title, message, confirmLabel, danger = true) {
  const v = await modal(title, [h('p', {}, message)], [
    { label: 'Cancel', value: 'cancel', class: 'ghost' },
    { label: confirmLabel, value: 'ok', class: danger ? 'danger' : 'primary' },
  ]);
  return v === 'ok';
}

// -------------------------------------------------------------- formatting

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

export function fmtBytes(n) {
  if (n === null || n === undefined || !Number.isFinite(Number(n))) return '—';
  let v = Number(n);
  let i = 0;
  while (Math.abs(v) >= 1024 && i < UNITS.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${i === 0 ? v : v.toFixed(v < 10 ? 1 : 0)} ${UNITS[i]}`;
}

export function fmtRate(bytesPerSec) {
  return `${fmtBytes(Math.max(0, Math.round(bytesPerSec)))}/s`;
}

export function fmtTime(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toLocaleString(undefined, { year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

export function timeCell(iso) {
  if (!iso) return '—';
  return h('time', { datetime: iso, title: iso }, fmtTime(iso));
}

export function fmtDuration(secs) {
  secs = Math.max(0, Math.floor(secs));
  const d = Math.floor(secs / 86400);
  const hh = Math.floor((secs % 86400) / 3600);
  const m = Math.floor((secs % 3600) / 60);
  const s = secs % 60;
  if (d) return `${d}d ${hh}h ${m}m`;
  if (hh) return `${hh}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

export function since(iso) {
  const t = new Date(iso).getTime();
  if (Number.isNaN(t)) return '—';
  return fmtDuration((Date.now() - t) / 1000);
}

/** <input type=datetime-local> value for an ISO instant, in local time. */
export function toLocalInput(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** An ISO instant (UTC) from a datetime-local value; null when empty. */
export function fromLocalInput(value) {
  if (!value) return null;
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? null : d.toISOString();
}

/** Saves text as a file the browser downloads. */
export function download(filename, text, type) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = h('a', { href: url, download: filename, class: 'sr-only' }, 'download');
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/** Runs `fn` every `ms` until the returned stop function is called; never overlaps itself. */
export function every(ms, fn) {
  let stopped = false;
  let timer = null;
  const tick = async () => {
    if (stopped) return;
    try {
      await fn();
    } catch (e) {
      if (!stopped) console.warn(e);
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
