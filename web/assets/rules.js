// Event rules (SPEC 8): what runs when partners move files — signed
// webhooks, commands, move and copy inside the account's home, retention on
// a schedule — and the deliveries that record every run.
//
// The webhook secret is write-only: no answer of the API holds it, so the
// page never shows it; saving a webhook with the secret field left empty
// keeps the stored secret (the PUT carries none).

import { ApiError, api, enc, withQuery } from './api.js';
import { badge, confirmAction, errorText, every, field, fill, h, notice, pageHeader, table, timeCell, toast, uid } from './ui.js';

/** [value, short label, what it means], in the order of SPEC 8. */
const TRIGGERS = [
  ['upload', 'Upload', 'a file was uploaded'],
  ['download', 'Download', 'a file was downloaded'],
  ['delete', 'Delete', 'a file was deleted'],
  ['rename', 'Rename', 'a file or folder was renamed'],
  ['mkdir', 'Mkdir', 'a folder was created'],
  ['rmdir', 'Rmdir', 'a folder was removed'],
  ['login_failed', 'Login failed', 'a login was refused'],
  ['quota_exceeded', 'Quota exceeded', 'the quota refused an operation'],
  ['account_changed', 'Account changed', 'an account was created, changed or deleted'],
  ['schedule', 'Schedule', 'runs every so often'],
];
const ACTIONS = [
  ['webhook', 'Webhook', 'a signed POST of the event'],
  ['command', 'Command', 'run a program'],
  ['move', 'Move', 'the file, inside the account’s home'],
  ['copy', 'Copy', 'the file, inside the account’s home'],
  ['retention', 'Retention', 'delete old files (trigger Schedule)'],
];
const PLACEHOLDERS = [
  ['{name}', 'the file’s name'],
  ['{dir}', 'its folder'],
  ['{path}', 'its full path'],
  ['{date}', 'the event’s UTC date, YYYY-MM-DD'],
  ['{username}', 'the account'],
];
const PROTOCOLS = ['ftp', 'ftps', 'sftp'];
const STATUSES = ['pending', 'succeeded', 'failed'];
const PERIOD_UNITS = [
  ['seconds', 1],
  ['minutes', 60],
  ['hours', 3600],
  ['days', 86400],
];
const REFRESH_MS = 2000;
/** Output and errors longer than this (or of several lines) are shown clipped until expanded. */
const CLIP = 100;

export function render(main, ctx) {
  const [mode, id] = ctx.params;
  if (mode === 'new') return renderEditor(main, ctx, null);
  if (mode === 'edit' && id) return renderEditor(main, ctx, id);
  return renderList(main, ctx);
}

function triggerLabel(t) {
  const found = TRIGGERS.find(([v]) => v === t);
  return found ? found[1] : t;
}

function fmtPeriod(secs) {
  for (const [unit, factor] of [...PERIOD_UNITS].reverse()) {
    if (secs >= factor && secs % factor === 0) {
      const n = secs / factor;
      return `${n} ${n === 1 ? unit.slice(0, -1) : unit}`;
    }
  }
  return `${secs} seconds`;
}

function triggerText(r) {
  return r.trigger === 'schedule' ? `Schedule, every ${fmtPeriod(r.every_secs)}` : triggerLabel(r.trigger);
}

/** "accounts: acme · paths: /inbox/** · protocols: FTP", or "any". */
function filterSummary(f) {
  f = f || {};
  const parts = [];
  if (f.usernames && f.usernames.length) parts.push(`accounts: ${f.usernames.join(', ')}`);
  if (f.path_globs && f.path_globs.length) parts.push(`paths: ${f.path_globs.join(', ')}`);
  if (f.protocols && f.protocols.length) parts.push(`protocols: ${f.protocols.map((p) => p.toUpperCase()).join(', ')}`);
  return parts.length ? h('span', { class: 'path' }, parts.join(' · ')) : h('span', { class: 'muted' }, 'any');
}

function shellWord(arg) {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`;
}

/** What the action acts on: its url, argv, target or folder. */
function actionTarget(a) {
  switch (a.type) {
    case 'webhook':
      return a.url || '';
    case 'command':
      return (a.argv || []).map(shellWord).join(' ');
    case 'move':
    case 'copy':
      return `→ ${a.to || ''}`;
    case 'retention':
      return `${a.path || ''}, older than ${a.older_than_days} day${a.older_than_days === 1 ? '' : 's'}`;
    default:
      return '';
  }
}

/** The body of a PUT that keeps the rule as it is but for `changes` (the secret stays stored). */
function ruleBody(r, changes) {
  const action = { ...r.action };
  delete action.secret;
  return { name: r.name, enabled: r.enabled, trigger: r.trigger, every_secs: r.every_secs || 0, filter: r.filter, action, ...changes };
}

function notAvailable(e) {
  return e instanceof ApiError && e.status === 404 && !(e.message || '').startsWith('event rule');
}

// -------------------------------------------------------------------- list

function renderList(main, ctx) {
  const rulesBox = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const newRule = h('a', { class: 'btn primary', href: '#/event-rules/new' }, 'New rule');
  const deliveries = deliveriesView(null);
  main.append(
    pageHeader('Event rules', 'What runs when partners move files: signed webhooks, commands, move and copy, retention on a schedule.', newRule),
    rulesBox,
    deliveries.element,
  );
  let gone = false;

  async function load() {
    let res;
    try {
      res = await api.get('/api/v1/event-rules');
    } catch (e) {
      if (gone) return;
      if (notAvailable(e)) {
        newRule.hidden = true;
        deliveries.element.hidden = true;
        fill(rulesBox, notice('Event rules are not available on this server version.', 'info'));
      } else {
        fill(rulesBox, notice(errorText(e), 'error'));
        deliveries.start();
      }
      return;
    }
    if (gone) return;
    const rules = res.items || [];
    deliveries.setRules(rules);
    deliveries.start();
    fill(
      rulesBox,
      h(
        'section',
        { class: 'card' },
        table(
          [
            { label: 'Name', cell: (r) => h('a', { href: `#/event-rules/edit/${enc(r.id)}`, class: 'strong' }, r.name), class: 'desc' },
            { label: 'Trigger', cell: (r) => triggerText(r) },
            { label: 'Filter', cell: (r) => filterSummary(r.filter), class: 'desc' },
            { label: 'Action', cell: (r) => h('span', {}, badge(r.action.type, 'proto'), ' ', h('span', { class: 'path mono' }, actionTarget(r.action))), class: 'desc' },
            { label: 'State', cell: (r) => (r.enabled ? badge('Enabled', 'ok') : badge('Disabled', 'off')) },
            {
              label: 'Actions',
              cell: (r) =>
                h(
                  'div',
                  { class: 'actions' },
                  h('button', { class: 'btn ghost small', type: 'button', 'aria-label': `${r.enabled ? 'Disable' : 'Enable'} rule ${r.name}`, onclick: () => toggle(r) }, r.enabled ? 'Disable' : 'Enable'),
                  h('button', { class: 'btn ghost small', type: 'button', 'aria-label': `Show deliveries of ${r.name}`, onclick: () => deliveries.showRule(r.id) }, 'Deliveries'),
                  h('button', { class: 'btn danger small', type: 'button', 'aria-label': `Delete rule ${r.name}`, onclick: () => remove(r) }, 'Delete'),
                ),
            },
          ],
          rules,
          { empty: 'No event rules yet. Create the first one.', caption: 'Event rules' },
        ),
      ),
    );
  }

  async function toggle(r) {
    try {
      await api.put(`/api/v1/event-rules/${enc(r.id)}`, ruleBody(r, { enabled: !r.enabled }));
      toast(r.enabled ? `Rule ${r.name} is disabled.` : `Rule ${r.name} is enabled.`);
    } catch (e) {
      toast(errorText(e), 'error');
    }
    await load();
    const again = [...rulesBox.querySelectorAll('button')].find((b) => b.getAttribute('aria-label') === `${r.enabled ? 'Enable' : 'Disable'} rule ${r.name}`);
    if (again) again.focus();
  }

  async function remove(r) {
    if (!(await deleteRule(r))) return;
    await load();
    const heading = main.querySelector('h1');
    if (heading) heading.focus();
  }

  load();
  return () => {
    gone = true;
    deliveries.stop();
  };
}

/** Asks, deletes; true when the rule is gone. */
async function deleteRule(r) {
  const ok = await confirmAction(`Delete rule ${r.name}?`, 'It stops at once; deliveries still pending fail when their turn comes. This cannot be undone.', 'Delete rule');
  if (!ok) return false;
  try {
    await api.del(`/api/v1/event-rules/${enc(r.id)}`);
    toast(`Rule ${r.name} deleted.`);
    return true;
  } catch (e) {
    toast(errorText(e), 'error');
    return false;
  }
}

// -------------------------------------------------------------- deliveries

/** A time of today as its clock time only, older ones in full (the full instant in the tooltip). */
function shortTime(iso) {
  const d = new Date(iso);
  if (!iso || Number.isNaN(d.getTime()) || d.toDateString() !== new Date().toDateString()) return timeCell(iso);
  return h('time', { datetime: iso, title: iso }, d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' }));
}

function statusBadge(s) {
  return badge(s, s === 'succeeded' ? 'ok' : s === 'failed' ? 'off' : 'warn');
}

function eventSummary(ev) {
  if (!ev || typeof ev !== 'object') return h('span', { class: 'muted' }, '—');
  let path = null;
  if (ev.path) path = ev.target_path ? `${ev.path} → ${ev.target_path}` : ev.path;
  return h(
    'div',
    { class: 'event-summary' },
    h('span', {}, badge(String(ev.event || '?')), ev.username ? h('span', { class: 'strong' }, ev.username) : null),
    path ? h('span', { class: 'path mono' }, path) : null,
  );
}

function clipText(text) {
  const firstLine = text.split('\n', 1)[0];
  const cut = firstLine.length > CLIP ? firstLine.slice(0, CLIP) : firstLine;
  return cut.length < text.length ? `${cut}…` : text;
}

/**
 * The deliveries of one rule (ruleId) or of all (null), newest first, with
 * a status filter (and a rule filter for all); refreshes every 2 seconds
 * once started.
 */
function deliveriesView(ruleId) {
  const names = new Map();
  const ruleSelect = ruleId === null ? h('select', { name: 'rule' }, h('option', { value: '' }, 'All rules')) : null;
  const statusSelect = h('select', { name: 'status' }, h('option', { value: '' }, 'Any'), STATUSES.map((s) => h('option', { value: s }, s)));
  const headingId = uid('deliveries');
  const heading = h('h2', { id: headingId, tabindex: '-1' }, ruleId === null ? 'Deliveries' : 'Deliveries of this rule');
  // Not a live region: it refreshes every 2 seconds.
  const box = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const problem = h('div', {});
  /** "<delivery id> output|error" shown in full. */
  const expanded = new Set();
  let items = null;
  let drawn = null;
  let generation = 0;
  let stopTimer = null;

  const element = h(
    'section',
    { class: 'card deliveries', 'aria-labelledby': headingId },
    h('div', { class: 'card-head' }, heading, h('span', { class: 'muted' }, 'Newest first; refreshes every 2 seconds.')),
    h(
      'form',
      { class: 'toolbar', role: 'search', 'aria-label': 'Filter deliveries', onsubmit: (ev) => ev.preventDefault() },
      ruleSelect ? field('Rule', ruleSelect) : null,
      field('Delivery status', statusSelect),
    ),
    problem,
    box,
  );
  for (const select of [ruleSelect, statusSelect]) {
    if (select) select.addEventListener('change', () => refresh());
  }

  async function refresh() {
    generation += 1;
    const mine = generation;
    let res;
    try {
      res = await api.get(withQuery('/api/v1/event-deliveries', { rule: ruleId === null ? ruleSelect.value : ruleId, status: statusSelect.value, limit: 100 }));
    } catch (e) {
      if (mine === generation) fill(problem, notice(errorText(e), 'error'));
      return;
    }
    if (mine !== generation) return;
    fill(problem);
    items = res.items || [];
    draw();
  }

  function ruleCell(id) {
    const name = names.get(id);
    if (name === undefined) return h('span', { class: 'muted' }, `#${id} (deleted)`);
    return h('a', { href: `#/event-rules/edit/${enc(id)}` }, name);
  }

  /** A delivery's output or error: clipped, with a button to show it all. */
  function longText(d, what) {
    const text = (what === 'output' ? d.output : d.last_error) || '';
    if (!text) return h('span', { class: 'muted' }, '—');
    const clipped = clipText(text);
    const cls = what === 'output' ? 'output' : 'output error';
    if (clipped === text) return h('pre', { class: cls }, text);
    const key = `${d.id} ${what}`;
    const pre = h('pre', { class: cls });
    const toggle = h('button', { class: 'btn ghost small', type: 'button', 'aria-label': `Full ${what} of delivery ${d.id}`, dataset: { expand: key } });
    const show = (open) => {
      pre.textContent = open ? text : clipped;
      toggle.textContent = open ? 'Show less' : 'Show all';
      toggle.setAttribute('aria-expanded', String(open));
    };
    toggle.addEventListener('click', () => {
      const open = !expanded.has(key);
      if (open) expanded.add(key);
      else expanded.delete(key);
      show(open);
    });
    show(expanded.has(key));
    return h('div', { class: 'output-cell' }, pre, toggle);
  }

  function draw() {
    if (items === null) return;
    // Unchanged: keep the table (its focus, selection, scroll) as it is.
    const key = JSON.stringify([items, [...names]]);
    if (key === drawn) return;
    drawn = key;
    const focused = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.expand : undefined;
    const columns = [
      { label: 'Id', cell: (d) => h('code', { class: 'hash', title: d.id }, d.id.length > 12 ? `${d.id.slice(0, 8)}…` : d.id) },
      ruleId === null ? { label: 'Rule', cell: (d) => ruleCell(d.rule_id), class: 'desc' } : null,
      { label: 'Event', cell: (d) => eventSummary(d.event), class: 'desc' },
      { label: 'Status', cell: (d) => statusBadge(d.status) },
      { label: 'Attempts', cell: (d) => String(d.attempts), class: 'num' },
      { label: 'Last error', cell: (d) => longText(d, 'error'), class: 'desc' },
      { label: 'Output', cell: (d) => longText(d, 'output'), class: 'desc' },
      { label: 'Next attempt', cell: (d) => (d.status === 'pending' ? shortTime(d.next_attempt_at) : h('span', { class: 'muted' }, '—')) },
      { label: 'Created', cell: (d) => shortTime(d.created_at) },
    ].filter(Boolean);
    const filtered = statusSelect.value || (ruleSelect && ruleSelect.value);
    fill(box, table(columns, items, { empty: filtered ? 'No delivery matches.' : 'Nothing has run yet.', caption: 'Deliveries' }));
    if (focused !== undefined) {
      const again = box.querySelector(`button[data-expand="${CSS.escape(focused)}"]`);
      if (again) again.focus();
    }
  }

  return {
    element,
    /** Rule names for the Rule column and filter. */
    setRules(rules) {
      names.clear();
      for (const r of rules) names.set(r.id, r.name);
      if (ruleSelect) {
        const current = ruleSelect.value;
        fill(ruleSelect, h('option', { value: '' }, 'All rules'), rules.map((r) => h('option', { value: String(r.id) }, r.name)));
        ruleSelect.value = rules.some((r) => String(r.id) === current) ? current : '';
      }
      draw();
    },
    /** Shows one rule's deliveries and moves there. */
    showRule(id) {
      if (!ruleSelect) return;
      ruleSelect.value = String(id);
      refresh();
      heading.focus();
      element.scrollIntoView({ block: 'start' });
    },
    start() {
      if (!stopTimer) stopTimer = every(REFRESH_MS, refresh);
    },
    stop() {
      if (stopTimer) stopTimer();
      stopTimer = null;
      generation += 1;
    },
  };
}

// ------------------------------------------------------------------ editor

function renderEditor(main, ctx, id) {
  const isNew = id === null;
  const box = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  main.append(
    pageHeader(isNew ? 'New event rule' : 'Event rule', isNew ? 'When it runs, on which events, and what it does.' : null, h('a', { class: 'btn ghost', href: '#/event-rules' }, 'Back to event rules')),
    box,
  );
  let gone = false;
  let deliveries = null;
  if (isNew) {
    fill(box, ruleForm(ctx, null));
  } else {
    api
      .get(`/api/v1/event-rules/${enc(id)}`)
      .then((rule) => {
        if (gone) return;
        main.querySelector('h1').textContent = `Event rule ${rule.name}`;
        deliveries = deliveriesView(rule.id);
        fill(box, ruleForm(ctx, rule), deliveries.element);
        deliveries.start();
      })
      .catch((e) => {
        if (gone) return;
        let message = errorText(e);
        if (e instanceof ApiError && e.status === 404) message = notAvailable(e) ? 'Event rules are not available on this server version.' : `There is no event rule ${id}.`;
        fill(box, notice(message, 'error'));
      });
  }
  return () => {
    gone = true;
    if (deliveries) deliveries.stop();
  };
}

/** Whole seconds entered as a number and a unit. */
function periodInput(name, secs) {
  let unit = PERIOD_UNITS[0];
  for (const u of PERIOD_UNITS) if (secs && secs % u[1] === 0) unit = u;
  const input = h('input', { type: 'number', min: '1', step: '1', name, value: String(secs ? secs / unit[1] : 1) });
  const select = h('select', { name: `${name}_unit`, 'aria-label': 'Unit of the period' }, PERIOD_UNITS.map(([label, factor]) => h('option', { value: String(factor), selected: factor === unit[1] }, label)));
  return {
    input,
    element: h('div', { class: 'inline' }, input, select),
    value() {
      const n = Number(input.value.trim());
      const secs = n * Number(select.value);
      if (input.value.trim() === '' || !Number.isInteger(secs) || secs < 1) throw new ApiError(422, 'invalid_field', 'every_secs: a whole number of seconds, 1 or more', 'every_secs');
      return secs;
    },
  };
}

function lines(text) {
  return text
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter(Boolean);
}

function wholeNumber(input, fieldName) {
  const raw = input.value.trim();
  const n = Number(raw);
  if (raw === '' || !Number.isInteger(n) || n < 0) throw new ApiError(422, 'invalid_field', `${fieldName}: a whole number`, fieldName);
  return n;
}

/** The form for a new rule (rule null) or an existing one. */
function ruleForm(ctx, rule) {
  const isNew = !rule;
  const r = rule || {
    name: '',
    enabled: true,
    trigger: 'upload',
    every_secs: 0,
    filter: { usernames: [], path_globs: [], protocols: [] },
    action: { type: 'webhook', url: '', timeout_secs: 10 },
  };
  const a = r.action || {};
  const f = r.filter || {};
  const hadSecret = !isNew && a.type === 'webhook';
  const inputs = {};
  const errorBox = h('div', {});

  inputs.name = h('input', { name: 'name', required: true, maxlength: '128', autocomplete: 'off', spellcheck: 'false', value: r.name });
  inputs.enabled = h('input', { type: 'checkbox', name: 'enabled', checked: r.enabled });
  inputs.trigger = h('select', { name: 'trigger' }, TRIGGERS.map(([v, label, what]) => h('option', { value: v, selected: v === r.trigger }, `${label} — ${what}`)));
  const period = periodInput('every_secs', r.trigger === 'schedule' ? r.every_secs : 3600);
  const periodField = field('Every', period.element, 'How often a schedule rule runs (1 second to a year).');

  inputs.usernames = h('textarea', { name: 'usernames', rows: '2', class: 'mono', spellcheck: 'false', autocapitalize: 'none', placeholder: 'acme' });
  inputs.usernames.value = (f.usernames || []).join('\n');
  inputs.globs = h('textarea', { name: 'path_globs', rows: '2', class: 'mono', spellcheck: 'false', placeholder: '/inbox/**' });
  inputs.globs.value = (f.path_globs || []).join('\n');
  const protocolBoxes = PROTOCOLS.map((p) => h('input', { type: 'checkbox', name: `protocol-${p}`, value: p, checked: (f.protocols || []).includes(p) }));

  inputs.type = h('select', { name: 'action_type' }, ACTIONS.map(([v, label, what]) => h('option', { value: v, selected: v === a.type }, `${label} — ${what}`)));
  // Webhook.
  inputs.url = h('input', { name: 'url', inputmode: 'url', autocomplete: 'off', spellcheck: 'false', placeholder: 'https://erp.example/hooks/drop', value: a.type === 'webhook' ? a.url : '' });
  // Never filled in: the API does not give the secret back.
  inputs.secret = h('input', { type: 'password', name: 'secret', autocomplete: 'new-password', spellcheck: 'false', maxlength: '1024' });
  inputs.webhookTimeout = h('input', { type: 'number', name: 'webhook_timeout_secs', min: '1', max: '300', step: '1', value: String(a.type === 'webhook' ? a.timeout_secs : 10) });
  // Command.
  inputs.argv = h('textarea', { name: 'argv', rows: '4', class: 'mono', spellcheck: 'false', autocapitalize: 'none', placeholder: '/usr/local/bin/scan\n--quiet' });
  inputs.argv.value = a.type === 'command' ? (a.argv || []).join('\n') : '';
  inputs.commandTimeout = h('input', { type: 'number', name: 'command_timeout_secs', min: '1', max: '3600', step: '1', value: String(a.type === 'command' ? a.timeout_secs : 10) });
  // Move, copy.
  inputs.to = h('input', { name: 'to', class: 'mono', autocomplete: 'off', spellcheck: 'false', placeholder: '/processed/{date}/{name}', value: a.type === 'move' || a.type === 'copy' ? a.to : '' });
  // Retention.
  inputs.retentionPath = h('input', { name: 'path', class: 'mono', autocomplete: 'off', spellcheck: 'false', placeholder: '/outbox', value: a.type === 'retention' ? a.path : '' });
  inputs.days = h('input', { type: 'number', name: 'older_than_days', min: '1', max: '36500', step: '1', value: String(a.type === 'retention' ? a.older_than_days : 30) });

  const insertPlaceholder = (p) => {
    const el = inputs.to;
    const start = el.selectionStart ?? el.value.length;
    const end = el.selectionEnd ?? el.value.length;
    el.value = el.value.slice(0, start) + p + el.value.slice(end);
    el.focus();
    el.setSelectionRange(start + p.length, start + p.length);
  };

  const groups = {
    webhook: h(
      'div',
      { class: 'action-group' },
      field('URL', inputs.url, 'http:// or https://. Loopback, private and link-local addresses are refused unless [events] allowed_webhook_hosts lists the host; redirects are never followed.'),
      h(
        'div',
        { class: 'grid two' },
        field('Secret', inputs.secret, hadSecret ? 'Leave empty to keep the current secret. It is write-only: never shown.' : 'Receivers check X-Dropgate-Signature (HMAC-SHA256 of the body) with it. Write-only: never shown again.'),
        field('Webhook timeout (seconds)', inputs.webhookTimeout, 'Per attempt, 1–300.'),
      ),
    ),
    command: h(
      'div',
      { class: 'action-group' },
      field('Program and arguments, one per line', inputs.argv, 'The program first, as an absolute path. No shell runs it; the event arrives in DROPGATE_EVENT_* variables.'),
      field('Command timeout (seconds)', inputs.commandTimeout, '1–3600; then its whole process group is killed.'),
    ),
    move: h(
      'div',
      { class: 'action-group' },
      field('Move or copy to', inputs.to, 'A path in the account’s home, acted on as the account; missing folders are created, an existing file is never replaced.'),
      h(
        'div',
        { class: 'placeholders' },
        h('p', { class: 'hint', id: uid('ph') }, 'Placeholders (press one to insert it):'),
        h(
          'ul',
          { class: 'placeholder-list' },
          PLACEHOLDERS.map(([p, what]) => h('li', {}, h('button', { class: 'btn ghost small mono', type: 'button', 'aria-label': `Insert ${p}, ${what}`, onclick: () => insertPlaceholder(p) }, p), h('span', { class: 'muted' }, ` ${what}`))),
        ),
      ),
    ),
    retention: h(
      'div',
      { class: 'action-group' },
      h(
        'div',
        { class: 'grid two' },
        field('Folder', inputs.retentionPath, 'In the home of each account of the filter (none listed: every account).'),
        field('Older than (days)', inputs.days, 'Regular files last modified longer ago are deleted; folders and links stay.'),
      ),
    ),
  };
  groups.copy = groups.move;

  function showTrigger() {
    periodField.hidden = inputs.trigger.value !== 'schedule';
  }
  function showAction() {
    for (const el of new Set(Object.values(groups))) el.hidden = el !== groups[inputs.type.value];
  }
  inputs.trigger.addEventListener('change', showTrigger);
  inputs.type.addEventListener('change', () => {
    // Retention runs on a schedule only: choose it for the operator.
    if (inputs.type.value === 'retention' && inputs.trigger.value !== 'schedule') {
      inputs.trigger.value = 'schedule';
      showTrigger();
    }
    showAction();
  });
  showTrigger();
  showAction();

  const save = h('button', { class: 'btn primary', type: 'submit' }, isNew ? 'Create rule' : 'Save changes');
  const del = isNew
    ? null
    : h('button', { class: 'btn danger', type: 'button', onclick: async () => { if (await deleteRule(rule)) ctx.navigate('#/event-rules'); } }, 'Delete…');
  const form = h(
    'form',
    { class: 'editor', novalidate: true },
    errorBox,
    h(
      'fieldset',
      { class: 'card' },
      h('legend', {}, 'Rule'),
      h('div', { class: 'grid two' }, field('Name', inputs.name, 'Unique; up to 128 characters.'), field('Trigger', inputs.trigger)),
      periodField,
      h('label', { class: 'check' }, inputs.enabled, ' Enabled (runs on matching events)'),
    ),
    h(
      'fieldset',
      { class: 'card' },
      h('legend', {}, 'Filter'),
      h('p', { class: 'hint lead' }, 'Which events the rule takes. An empty list matches anything.'),
      h(
        'div',
        { class: 'grid two' },
        field('Accounts, one per line', inputs.usernames, 'Empty: any account.'),
        field('Path globs, one per line', inputs.globs, '* and ? stay within one folder, ** crosses folders; a rename matches by either path.'),
      ),
      h('div', { class: 'checks', role: 'group', 'aria-label': 'Protocols' }, h('span', { class: 'label' }, 'Protocols'), protocolBoxes.map((b) => h('label', { class: 'check' }, b, ` ${b.value.toUpperCase()}`)), h('span', { class: 'hint' }, 'None checked: any.')),
    ),
    h('fieldset', { class: 'card' }, h('legend', {}, 'Action'), field('Action type', inputs.type), groups.webhook, groups.command, groups.move, groups.retention),
    h('div', { class: 'actions sticky' }, del, h('span', { class: 'spacer' }), h('a', { class: 'btn ghost', href: '#/event-rules' }, 'Cancel'), save),
  );

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors();
    let body;
    try {
      body = collect();
    } catch (e) {
      showError(e);
      return;
    }
    save.disabled = true;
    try {
      if (isNew) {
        const created = await api.post('/api/v1/event-rules', body);
        toast(`Rule ${created.name} created.`);
      } else {
        const saved = await api.put(`/api/v1/event-rules/${enc(rule.id)}`, body);
        toast(`Rule ${saved.name} saved.`);
      }
      inputs.secret.value = '';
      ctx.navigate('#/event-rules');
    } catch (e) {
      showError(e);
    } finally {
      save.disabled = false;
    }
  });

  function collect() {
    const type = inputs.type.value;
    let action;
    if (type === 'webhook') {
      action = { type, url: inputs.url.value.trim(), timeout_secs: wholeNumber(inputs.webhookTimeout, 'action.timeout_secs') };
      // Empty: keep the stored secret (a new rule without one gets the server's 422).
      if (inputs.secret.value) action.secret = inputs.secret.value;
    } else if (type === 'command') {
      action = { type, argv: lines(inputs.argv.value), timeout_secs: wholeNumber(inputs.commandTimeout, 'action.timeout_secs') };
    } else if (type === 'move' || type === 'copy') {
      action = { type, to: inputs.to.value.trim() };
    } else {
      action = { type, path: inputs.retentionPath.value.trim(), older_than_days: wholeNumber(inputs.days, 'action.older_than_days') };
    }
    const trigger = inputs.trigger.value;
    return {
      name: inputs.name.value.trim(),
      enabled: inputs.enabled.checked,
      trigger,
      every_secs: trigger === 'schedule' ? period.value() : 0,
      filter: {
        usernames: lines(inputs.usernames.value),
        path_globs: lines(inputs.globs.value),
        protocols: protocolBoxes.filter((b) => b.checked).map((b) => b.value),
      },
      action,
    };
  }

  /** The control a field name of a 422 (or a 409 on the name) points at. */
  function fieldElement(e) {
    if (e.status === 409) return inputs.name;
    const name = e.field;
    if (!name) return null;
    const type = inputs.type.value;
    const map = {
      name: inputs.name,
      enabled: inputs.enabled,
      trigger: inputs.trigger,
      every_secs: period.input,
      filter: inputs.globs,
      'filter.usernames': inputs.usernames,
      'filter.path_globs': inputs.globs,
      'filter.protocols': protocolBoxes[0],
      action: inputs.type,
      'action.type': inputs.type,
      'action.url': inputs.url,
      'action.secret': inputs.secret,
      'action.timeout_secs': type === 'command' ? inputs.commandTimeout : inputs.webhookTimeout,
      'action.argv': inputs.argv,
      'action.to': inputs.to,
      'action.path': inputs.retentionPath,
      'action.older_than_days': inputs.days,
    };
    return map[name] || (name.startsWith('action.') ? inputs.type : null);
  }

  /** Messages put next to fields, to take away at the next submit. */
  let shown = [];
  function clearErrors() {
    for (const { target, message, describedBy } of shown) {
      message.remove();
      target.removeAttribute('aria-invalid');
      if (describedBy) target.setAttribute('aria-describedby', describedBy);
      else target.removeAttribute('aria-describedby');
    }
    shown = [];
    fill(errorBox);
  }

  function showError(e) {
    const target = e ? fieldElement(e) : null;
    const holder = target ? target.closest('.field, .checks') : null;
    if (!target || !holder || holder.closest('[hidden]')) {
      errorBox.append(notice(errorText(e), 'error'));
      errorBox.scrollIntoView({ block: 'center' });
      return;
    }
    const text = e.field ? e.message.replace(new RegExp(`^${e.field.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: `), '') : e.message;
    const message = h('p', { class: 'field-error', id: uid('err'), role: 'alert' }, text);
    const describedBy = target.getAttribute('aria-describedby');
    holder.append(message);
    target.setAttribute('aria-invalid', 'true');
    target.setAttribute('aria-describedby', describedBy ? `${message.id} ${describedBy}` : message.id);
    shown.push({ target, message, describedBy });
    target.focus();
  }

  return form;
}
