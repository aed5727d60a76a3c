// Accounts: a searchable, paginated list, and the editor for every field of
// SPEC section 4 (permissions by path, keys, quota with usage, bandwidth,
// allowed networks, expiry, protocols, max sessions), plus disable, reset
// password and delete with or without files.

import { ApiError, api, enc, withQuery } from './api.js';
import { badge, clear, errorText, field, fill, fmtBytes, fromLocalInput, h, modal, notice, pageHeader, table, timeCell, toast, toLocalInput, uid } from './ui.js';

const PAGE_SIZE = 25;
/** Searching reads the accounts in pages of this size (the API's largest). */
const SCAN_PAGE = 500;
/** Searching stops reading after this many accounts and says so. */
const SCAN_LIMIT = 20000;
const PERMISSIONS = ['list', 'download', 'upload', 'overwrite', 'delete', 'rename', 'mkdir', 'rmdir', 'chtimes'];
const PROTOCOLS = ['ftp', 'ftps', 'sftp'];
const SIZE_UNITS = [
  ['B', 1],
  ['KiB', 1024],
  ['MiB', 1024 ** 2],
  ['GiB', 1024 ** 3],
  ['TiB', 1024 ** 4],
];

export function render(main, ctx) {
  const [mode, name] = ctx.params;
  if (mode === 'new') return renderEditor(main, ctx, null);
  if (mode === 'edit' && name) return renderEditor(main, ctx, name);
  return renderList(main, ctx);
}

// -------------------------------------------------------------------- list

function renderList(main, ctx) {
  const search = h('input', { type: 'search', placeholder: 'Name or description', autocomplete: 'off', spellcheck: 'false' });
  const results = h('div', {});
  const pager = h('nav', { class: 'pager', 'aria-label': 'Pages' });
  let page = 0;
  let searchTimer = null;
  let generation = 0;

  main.append(
    pageHeader('Accounts', 'Partner accounts that log in over FTP, FTPS and SFTP.', h('a', { class: 'btn primary', href: '#/accounts/new' }, 'New account')),
    h(
      'form',
      { class: 'toolbar', role: 'search', onsubmit: (ev) => { ev.preventDefault(); page = 0; load(); } },
      field('Search accounts', search),
    ),
    results,
    pager,
  );

  search.addEventListener('input', () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => {
      page = 0;
      load();
    }, 250);
  });

  async function load() {
    generation += 1;
    const mine = generation;
    const term = search.value.trim().toLowerCase();
    let items;
    let total;
    let truncated = false;
    try {
      if (!term) {
        const res = await api.get(withQuery('/api/v1/users', { limit: PAGE_SIZE, offset: page * PAGE_SIZE }));
        items = res.items;
        total = res.total;
      } else {
        // The API pages by name without a filter: read and filter here.
        const all = [];
        for (let offset = 0; ; offset += SCAN_PAGE) {
          const res = await api.get(withQuery('/api/v1/users', { limit: SCAN_PAGE, offset }));
          all.push(...res.items.filter((u) => u.username.toLowerCase().includes(term) || (u.description || '').toLowerCase().includes(term)));
          if (res.items.length < SCAN_PAGE) break;
          if (offset + SCAN_PAGE >= SCAN_LIMIT) {
            truncated = true;
            break;
          }
        }
        total = all.length;
        items = all.slice(page * PAGE_SIZE, (page + 1) * PAGE_SIZE);
      }
    } catch (e) {
      if (mine === generation) fill(results, notice(errorText(e), 'error'));
      return;
    }
    if (mine !== generation) return;
    fill(results, 
      truncated ? notice(`Searched the first ${SCAN_LIMIT} accounts only.`, 'warn') : null,
      table(
        [
          { label: 'Account', cell: (u) => h('a', { href: `#/accounts/edit/${enc(u.username)}`, class: 'strong' }, u.username) },
          { label: 'State', cell: (u) => stateBadge(u) },
          { label: 'Protocols', cell: (u) => (u.protocols || []).map((p) => badge(p.toUpperCase(), 'proto')) },
          { label: 'Storage', cell: (u) => usageText(u) },
          { label: 'Last login', cell: (u) => timeCell(u.last_login_at) },
          { label: 'Description', cell: (u) => h('span', { class: 'clip' }, u.description || ''), class: 'desc' },
        ],
        items,
        { empty: term ? 'No account matches.' : 'No accounts yet. Create the first one.', caption: 'Accounts' },
      ),
    );
    renderPager(total);
  }

  function renderPager(total) {
    clear(pager);
    const pages = Math.max(1, Math.ceil(total / PAGE_SIZE));
    if (page >= pages) page = pages - 1;
    pager.append(
      h('button', { class: 'btn ghost small', type: 'button', disabled: page === 0, onclick: () => { page -= 1; load(); } }, 'Previous'),
      h('span', { class: 'muted', role: 'status' }, `Page ${page + 1} of ${pages} · ${total} account${total === 1 ? '' : 's'}`),
      h('button', { class: 'btn ghost small', type: 'button', disabled: page + 1 >= pages, onclick: () => { page += 1; load(); } }, 'Next'),
    );
  }

  load();
  return () => clearTimeout(searchTimer);
}

function stateBadge(u) {
  if (!u.enabled) return badge('Disabled', 'off');
  if (u.expires_at && new Date(u.expires_at).getTime() <= Date.now()) return badge('Expired', 'warn');
  return badge('Active', 'ok');
}

function usageText(u) {
  const q = u.quota || {};
  const used = u.usage ? fmtBytes(u.usage.bytes) : null;
  const limit = q.max_bytes ? fmtBytes(q.max_bytes) : 'unlimited';
  if (used) return q.max_bytes ? `${used} of ${limit}` : `${used} · no quota`;
  return q.max_bytes ? `Quota ${limit}` : 'No quota';
}

// ------------------------------------------------------------------ editor

function renderEditor(main, ctx, username) {
  const isNew = username === null;
  const box = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  main.append(
    pageHeader(isNew ? 'New account' : `Account ${username}`, isNew ? 'A partner account for FTP, FTPS and SFTP.' : null, h('a', { class: 'btn ghost', href: '#/accounts' }, 'Back to accounts')),
    box,
  );
  if (isNew) {
    fill(box, editorForm(ctx, null));
  } else {
    api
      .get(`/api/v1/users/${enc(username)}`)
      .then((user) => fill(box, accountActions(ctx, user), editorForm(ctx, user)))
      .catch((e) => fill(box, notice(e instanceof ApiError && e.status === 404 ? `There is no account named ${username}.` : errorText(e), 'error')));
  }
  return null;
}

function accountActions(ctx, user) {
  const toggle = h('button', { class: 'btn ghost', type: 'button' }, user.enabled ? 'Disable' : 'Enable');
  toggle.addEventListener('click', async () => {
    try {
      await api.patch(`/api/v1/users/${enc(user.username)}`, { enabled: !user.enabled });
      toast(user.enabled ? `${user.username} is disabled; its sessions were ended.` : `${user.username} is enabled.`);
      ctx.navigate(`#/accounts/edit/${enc(user.username)}`);
    } catch (e) {
      toast(errorText(e), 'error');
    }
  });
  const reset = h('button', { class: 'btn ghost', type: 'button', onclick: () => resetPassword(user) }, 'Reset password');
  const del = h('button', { class: 'btn danger', type: 'button', onclick: () => deleteAccount(ctx, user) }, 'Delete…');
  return h(
    'div',
    { class: 'card account-summary' },
    h(
      'dl',
      { class: 'facts' },
      fact('State', stateBadge(user)),
      fact('Created', timeCell(user.created_at)),
      fact('Last login', timeCell(user.last_login_at)),
      user.usage ? fact('Stored', `${fmtBytes(user.usage.bytes)} in ${user.usage.files} file${user.usage.files === 1 ? '' : 's'}`) : null,
    ),
    h('div', { class: 'actions' }, toggle, reset, del),
  );
}

function fact(name, value) {
  return h('div', {}, h('dt', {}, name), h('dd', {}, value));
}

async function resetPassword(user) {
  const input = h('input', { type: 'text', autocomplete: 'new-password', spellcheck: 'false', minlength: '1', maxlength: '1024', class: 'mono' });
  input.value = randomPassword();
  const v = await modal(
    `Reset the password of ${user.username}`,
    [
      field('New password', input, 'A random password is suggested; copy it before saving. Its live sessions end.'),
    ],
    [
      { label: 'Cancel', value: 'cancel', class: 'ghost' },
      { label: 'Set password', value: 'ok', class: 'primary' },
    ],
  );
  if (v !== 'ok') return;
  try {
    await api.patch(`/api/v1/users/${enc(user.username)}`, { password: input.value });
    toast(`New password set for ${user.username}.`);
  } catch (e) {
    toast(errorText(e), 'error');
  }
}

async function deleteAccount(ctx, user) {
  const withFiles = h('input', { type: 'checkbox' });
  const v = await modal(
    `Delete ${user.username}?`,
    [
      h('p', {}, 'The account is removed and its live sessions end. This cannot be undone.'),
      h('label', { class: 'check' }, withFiles, ` Also delete its files (the home folder ${user.home})`),
    ],
    [
      { label: 'Cancel', value: 'cancel', class: 'ghost' },
      { label: 'Delete account', value: 'ok', class: 'danger' },
    ],
  );
  if (v !== 'ok') return;
  try {
    await api.del(withQuery(`/api/v1/users/${enc(user.username)}`, { delete_files: withFiles.checked ? 'true' : '' }));
    toast(`${user.username} deleted${withFiles.checked ? ' with its files' : ''}.`);
    ctx.navigate('#/accounts');
  } catch (e) {
    toast(errorText(e), 'error');
  }
}

function randomPassword() {
  const alphabet = 'ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789';
  const bytes = crypto.getRandomValues(new Uint8Array(20));
  return Array.from(bytes, (b) => alphabet[b % alphabet.length]).join('');
}

/** The form for a new account (user null) or an existing one. */
function editorForm(ctx, user) {
  const isNew = !user;
  const u = user || {
    username: '',
    public_keys: [],
    home: '',
    permissions: { '/': ['*'] },
    enabled: true,
    expires_at: null,
    quota: { max_bytes: 0, max_files: 0 },
    bandwidth: { upload_kib_s: 0, download_kib_s: 0 },
    allowed_ips: [],
    protocols: [...PROTOCOLS],
    description: '',
    max_sessions: 0,
  };
  const inputs = {};
  const errorBox = h('div', {});

  inputs.username = h('input', { name: 'username', required: true, autocomplete: 'off', spellcheck: 'false', autocapitalize: 'none', pattern: '[A-Za-z0-9_][A-Za-z0-9._\\-]{0,63}', maxlength: '64', value: u.username, readOnly: !isNew });
  inputs.password = h('input', { name: 'password', type: 'text', autocomplete: 'new-password', spellcheck: 'false', class: 'mono', maxlength: '1024' });
  inputs.description = h('textarea', { name: 'description', rows: '2', maxlength: '1024' });
  inputs.description.value = u.description || '';
  inputs.enabled = h('input', { type: 'checkbox', name: 'enabled', checked: u.enabled });
  inputs.expires_at = h('input', { type: 'datetime-local', name: 'expires_at', value: toLocalInput(u.expires_at) });
  inputs.home = h('input', { name: 'home', autocomplete: 'off', spellcheck: 'false', value: u.home, placeholder: 'the username' });
  const protocolBoxes = PROTOCOLS.map((p) => h('input', { type: 'checkbox', name: `protocol-${p}`, value: p, checked: (u.protocols || []).includes(p) }));
  const perms = permissionEditor(u.permissions || {});
  inputs.public_keys = h('textarea', { name: 'public_keys', rows: '3', class: 'mono', spellcheck: 'false', placeholder: 'ssh-ed25519 AAAA… partner@laptop' });
  inputs.public_keys.value = (u.public_keys || []).join('\n');
  const keyFile = h('input', { type: 'file', accept: '.pub,text/plain', multiple: true });
  keyFile.addEventListener('change', async () => {
    const lines = [];
    for (const file of keyFile.files) {
      if (file.size > 64 * 1024) {
        toast(`${file.name} is too large for a public key file.`, 'error');
        continue;
      }
      const text = await file.text();
      lines.push(...text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l && !l.startsWith('#')));
    }
    const current = inputs.public_keys.value.trim();
    inputs.public_keys.value = [current, ...lines].filter(Boolean).join('\n');
    keyFile.value = '';
  });
  const quotaBytes = sizeInput('quota_max_bytes', u.quota ? u.quota.max_bytes : 0);
  inputs.max_files = h('input', { type: 'number', min: '0', step: '1', name: 'max_files', value: String(u.quota ? u.quota.max_files : 0) });
  inputs.upload_kib_s = h('input', { type: 'number', min: '0', step: '1', name: 'upload_kib_s', value: String(u.bandwidth ? u.bandwidth.upload_kib_s : 0) });
  inputs.download_kib_s = h('input', { type: 'number', min: '0', step: '1', name: 'download_kib_s', value: String(u.bandwidth ? u.bandwidth.download_kib_s : 0) });
  const hasMaxSessions = ctx.caps.maxSessions || (user && 'max_sessions' in user);
  inputs.max_sessions = h('input', { type: 'number', min: '0', step: '1', name: 'max_sessions', value: String(u.max_sessions || 0) });
  inputs.allowed_ips = h('textarea', { name: 'allowed_ips', rows: '2', class: 'mono', spellcheck: 'false', placeholder: '192.0.2.0/24' });
  inputs.allowed_ips.value = (u.allowed_ips || []).join('\n');

  const usage = user && user.usage ? usageMeter(user.usage, user.quota) : null;

  const save = h('button', { class: 'btn primary', type: 'submit' }, isNew ? 'Create account' : 'Save changes');
  const form = h(
    'form',
    { class: 'editor', novalidate: true },
    errorBox,
    h(
      'fieldset',
      { class: 'card' },
      h('legend', {}, 'Identity'),
      h('div', { class: 'grid two' }, field('Username', inputs.username, isNew ? '1–64 of A–Z a–z 0–9 . _ -' : 'Accounts cannot be renamed.'), field('Home folder', inputs.home, 'Below the storage root; default: the username.')),
      isNew
        ? field(
            'Password',
            h('div', { class: 'inline' }, inputs.password, h('button', { class: 'btn ghost small', type: 'button', onclick: () => { inputs.password.value = randomPassword(); } }, 'Generate')),
            'Leave empty for an SFTP key-only account. Shown here once: copy it for the partner.',
          )
        : null,
      field('Description', inputs.description),
      h('label', { class: 'check' }, inputs.enabled, ' Enabled (can log in)'),
    ),
    h('fieldset', { class: 'card' }, h('legend', {}, 'Permissions by path'), h('p', { class: 'hint' }, 'The longest matching path wins; a path no rule covers is denied.'), perms.element),
    h(
      'fieldset',
      { class: 'card' },
      h('legend', {}, 'SSH public keys'),
      field('Keys, one per line (OpenSSH format)', inputs.public_keys),
      field('Add keys from a file', keyFile, 'For example id_ed25519.pub; its lines are added above.'),
    ),
    h(
      'fieldset',
      { class: 'card' },
      h('legend', {}, 'Limits'),
      usage,
      h('div', { class: 'grid two' }, field('Quota: storage', quotaBytes.element, '0 = unlimited'), field('Quota: files', inputs.max_files, '0 = unlimited')),
      h('div', { class: 'grid two' }, field('Upload bandwidth (KiB/s)', inputs.upload_kib_s, '0 = unlimited; shared by all its transfers'), field('Download bandwidth (KiB/s)', inputs.download_kib_s, '0 = unlimited')),
      hasMaxSessions ? field('Max concurrent sessions', inputs.max_sessions, '0 = unlimited; all protocols and nodes') : null,
    ),
    h(
      'fieldset',
      { class: 'card' },
      h('legend', {}, 'Access'),
      h('div', { class: 'checks', role: 'group', 'aria-label': 'Protocols' }, h('span', { class: 'label' }, 'Protocols'), protocolBoxes.map((b) => h('label', { class: 'check' }, b, ` ${b.value.toUpperCase()}`))),
      field('Allowed networks, one CIDR per line', inputs.allowed_ips, 'Empty: any address.'),
      field('Expires', inputs.expires_at, 'Empty: never. In your local time.'),
    ),
    h('div', { class: 'actions sticky' }, h('a', { class: 'btn ghost', href: '#/accounts' }, 'Cancel'), save),
  );

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clear(errorBox);
    for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
    let body;
    try {
      body = {
        public_keys: lines(inputs.public_keys.value),
        permissions: perms.value(),
        enabled: inputs.enabled.checked,
        expires_at: fromLocalInput(inputs.expires_at.value),
        quota: { max_bytes: quotaBytes.value(), max_files: count(inputs.max_files, 'quota.max_files') },
        bandwidth: { upload_kib_s: count(inputs.upload_kib_s, 'bandwidth.upload_kib_s'), download_kib_s: count(inputs.download_kib_s, 'bandwidth.download_kib_s') },
        allowed_ips: lines(inputs.allowed_ips.value),
        protocols: protocolBoxes.filter((b) => b.checked).map((b) => b.value),
        description: inputs.description.value,
      };
      if (inputs.home.value.trim()) body.home = inputs.home.value.trim();
      if (hasMaxSessions) body.max_sessions = count(inputs.max_sessions, 'max_sessions');
    } catch (e) {
      showError(e);
      return;
    }
    save.disabled = true;
    try {
      if (isNew) {
        body.username = inputs.username.value.trim();
        if (inputs.password.value) body.password = inputs.password.value;
        const created = await api.post('/api/v1/users', body);
        toast(`Account ${created.username} created.`);
        ctx.navigate(`#/accounts/edit/${enc(created.username)}`);
      } else {
        await api.patch(`/api/v1/users/${enc(user.username)}`, body);
        toast(`Account ${user.username} saved.`);
        ctx.navigate(`#/accounts/edit/${enc(user.username)}`);
      }
    } catch (e) {
      showError(e);
    } finally {
      save.disabled = false;
    }
  });

  function showError(e) {
    errorBox.append(notice(errorText(e), 'error'));
    const target = e && e.field ? fieldElement(e.field) : null;
    if (target) {
      target.setAttribute('aria-invalid', 'true');
      target.focus();
    } else {
      errorBox.scrollIntoView({ block: 'center' });
    }
  }

  function fieldElement(name) {
    const root = name.split(/[.[]/)[0];
    const map = {
      username: inputs.username,
      password: inputs.password,
      description: inputs.description,
      home: inputs.home,
      expires_at: inputs.expires_at,
      public_keys: inputs.public_keys,
      allowed_ips: inputs.allowed_ips,
      max_sessions: inputs.max_sessions,
      protocols: protocolBoxes[0],
      permissions: perms.firstInput(),
    };
    if (name.startsWith('quota.max_files')) return inputs.max_files;
    if (name.startsWith('quota')) return quotaBytes.input;
    if (name.includes('upload_kib_s')) return inputs.upload_kib_s;
    if (name.startsWith('bandwidth')) return inputs.download_kib_s;
    return map[root] || null;
  }

  return form;
}

function lines(text) {
  return text
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter(Boolean);
}

function count(input, fieldName) {
  const raw = input.value.trim();
  if (raw === '') return 0;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 0) throw new ApiError(422, 'invalid_field', `${fieldName}: a whole number, 0 or more`, fieldName);
  return n;
}

/** Bytes entered as a number and a unit. */
function sizeInput(name, bytes) {
  let unit = SIZE_UNITS[0];
  for (const u of SIZE_UNITS) if (bytes && bytes % u[1] === 0) unit = u;
  const input = h('input', { type: 'number', min: '0', step: 'any', name, value: String(bytes ? bytes / unit[1] : 0) });
  const select = h('select', { name: `${name}_unit`, 'aria-label': 'Unit' }, SIZE_UNITS.map(([label, factor]) => h('option', { value: String(factor), selected: factor === unit[1] }, label)));
  return {
    input,
    element: h('div', { class: 'inline' }, input, select),
    value() {
      const n = Number(input.value || 0);
      if (!Number.isFinite(n) || n < 0) throw new ApiError(422, 'invalid_field', 'quota.max_bytes: a size, 0 or more', 'quota.max_bytes');
      return Math.round(n * Number(select.value));
    },
  };
}

function usageMeter(usage, quota) {
  const max = quota && quota.max_bytes ? quota.max_bytes : 0;
  const share = max ? Math.min(1, usage.bytes / max) : 0;
  const meter = h('meter', { min: '0', max: '1', value: String(share), low: '0.7', high: '0.9', optimum: '0' });
  const text = max ? `${fmtBytes(usage.bytes)} of ${fmtBytes(max)} used (${Math.round(share * 100)}%)` : `${fmtBytes(usage.bytes)} used, no storage quota`;
  const files = quota && quota.max_files ? `${usage.files} of ${quota.max_files} files` : `${usage.files} files`;
  return h('div', { class: 'usage' }, h('p', {}, h('strong', {}, 'Current usage: '), `${text}; ${files}.`), max ? meter : null);
}

/** Rows of [path][permission checkboxes][remove]. */
function permissionEditor(map) {
  const rows = h('div', { class: 'perm-rows' });
  const all = [];
  const head = h(
    'div',
    { class: 'perm-row perm-head', 'aria-hidden': 'true' },
    h('span', {}, 'Path'),
    h('span', {}, 'Permissions'),
    h('span', {}),
  );

  function addRow(path, perms) {
    const pathInput = h('input', { class: 'mono', value: path, 'aria-label': 'Path', placeholder: '/inbox', spellcheck: 'false' });
    const group = uid('perms');
    const boxes = ['*', ...PERMISSIONS].map((p) => h('input', { type: 'checkbox', value: p, checked: perms.includes(p) || (p !== '*' && perms.includes('*')) }));
    const star = boxes[0];
    star.addEventListener('change', () => {
      for (const b of boxes.slice(1)) {
        b.checked = star.checked;
        b.disabled = star.checked;
      }
    });
    if (star.checked) for (const b of boxes.slice(1)) b.disabled = true;
    const row = {
      pathInput,
      boxes,
      element: h(
        'div',
        { class: 'perm-row' },
        pathInput,
        h('div', { class: 'perm-boxes', role: 'group', 'aria-label': `Permissions`, id: group }, boxes.map((b) => h('label', { class: 'check small' }, b, ` ${b.value === '*' ? 'all' : b.value}`))),
        h('button', { class: 'btn ghost small', type: 'button', 'aria-label': 'Remove this path', onclick: () => remove(row) }, 'Remove'),
      ),
    };
    all.push(row);
    rows.append(row.element);
    return row;
  }

  function remove(row) {
    const i = all.indexOf(row);
    if (i >= 0) all.splice(i, 1);
    row.element.remove();
  }

  for (const [path, perms] of Object.entries(map).sort(([a], [b]) => a.localeCompare(b))) addRow(path, perms);
  const add = h('button', { class: 'btn ghost small', type: 'button', onclick: () => addRow('', ['list']).pathInput.focus() }, 'Add path');
  return {
    element: h('div', { class: 'perm-editor' }, head, rows, add),
    firstInput: () => (all[0] ? all[0].pathInput : add),
    value() {
      const out = {};
      for (const row of all) {
        const path = row.pathInput.value.trim();
        if (!path) continue;
        const star = row.boxes[0].checked;
        out[path] = star ? ['*'] : row.boxes.slice(1).filter((b) => b.checked).map((b) => b.value);
      }
      return out;
    },
  };
}
