// API keys: long-lived credentials for scripts. A key is shown once, when
// it is created; the list shows only ids and descriptions.

import { api, enc } from './api.js';
import { confirmAction, errorText, field, fill, h, modal, notice, pageHeader, table, timeCell, toast } from './ui.js';

export function render(main) {
  const description = h('input', { name: 'description', maxlength: '1024', autocomplete: 'off', placeholder: 'nightly provisioning job' });
  const create = h('button', { class: 'btn primary', type: 'submit' }, 'Create key');
  const box = h('div', {});
  main.append(
    pageHeader('API keys', 'Credentials for scripts: send one as Authorization: Bearer <key>. A key acts as the admin who created it.'),
    h(
      'form',
      { class: 'card toolbar', onsubmit: (ev) => { ev.preventDefault(); createKey(); } },
      field('Description of the new key', description),
      create,
    ),
    box,
  );

  async function load() {
    try {
      const res = await api.get('/api/v1/api-keys');
      fill(box, 
        table(
          [
            { label: 'Id', cell: (k) => h('code', {}, k.id) },
            { label: 'Description', cell: (k) => k.description || h('span', { class: 'muted' }, 'no description') },
            { label: 'Admin', cell: (k) => k.admin },
            { label: 'Created', cell: (k) => timeCell(k.created_at) },
            { label: 'Last used', cell: (k) => timeCell(k.last_used_at) },
            { label: 'Action', cell: (k) => h('button', { class: 'btn danger small', type: 'button', 'aria-label': `Revoke key ${k.id}`, onclick: () => revoke(k) }, 'Revoke') },
          ],
          res.items || [],
          { empty: 'No API keys.', caption: 'API keys' },
        ),
      );
    } catch (e) {
      fill(box, notice(errorText(e), 'error'));
    }
  }

  async function createKey() {
    create.disabled = true;
    try {
      const res = await api.post('/api/v1/api-keys', { description: description.value });
      description.value = '';
      const keyBox = h('input', { class: 'mono wide', readOnly: true, value: res.key, 'aria-label': 'The new API key' });
      const copy = h('button', { class: 'btn ghost small', type: 'button' }, 'Copy');
      copy.addEventListener('click', async () => {
        keyBox.select();
        try {
          await navigator.clipboard.writeText(res.key);
          copy.textContent = 'Copied';
        } catch {
          copy.textContent = 'Press Ctrl+C';
        }
      });
      load();
      await modal('Your new API key', [
        h('p', {}, 'Copy it now: it is shown only this once and cannot be retrieved later.'),
        h('div', { class: 'inline' }, keyBox, copy),
        h('p', { class: 'hint' }, 'Key id ', h('code', {}, res.id)),
      ], [{ label: 'Done', value: 'ok', class: 'primary' }]);
    } catch (e) {
      toast(errorText(e), 'error');
    } finally {
      create.disabled = false;
    }
  }

  async function revoke(k) {
    const ok = await confirmAction(`Revoke key ${k.id}?`, `Scripts using it (${k.description || 'no description'}) fail from now on.`, 'Revoke key');
    if (!ok) return;
    try {
      await api.del(`/api/v1/api-keys/${enc(k.id)}`);
      toast(`Key ${k.id} revoked.`);
      load();
    } catch (e) {
      toast(errorText(e), 'error');
    }
  }

  load();
  return null;
}
