// End to end: the console in headless Chromium against a real gateway.
//
// Run by crates/dropgate/tests/console.rs (cargo test), which starts the
// gateway and passes:
//   DROPGATE_URL             http://127.0.0.1:PORT of the admin listener
//   DROPGATE_ADMIN_PASSWORD  the first admin's password
//   DROPGATE_FTP             127.0.0.1:PORT of the FTP listener (its
//                            webhook rules may not reach loopback)
//   DROPGATE_SCREENSHOTS     folder for one screenshot per page
//   CHROMIUM                 the browser (default /usr/bin/chromium)
// Exits 0 when every check passed; prints each step.

import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

const URL_BASE = need('DROPGATE_URL');
const ADMIN_PASSWORD = need('DROPGATE_ADMIN_PASSWORD');
const [FTP_HOST, FTP_PORT] = need('DROPGATE_FTP').split(':');
const SHOTS = need('DROPGATE_SCREENSHOTS');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const XSS = '<img src=x onerror=alert(1)>';
const PARTNER = 'acme';
const PARTNER_PASSWORD = 'S3cure-pass-for-acme';

function need(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`missing environment variable ${name}`);
    process.exit(2);
  }
  return v;
}

// The whole run must not hang the cargo test.
const watchdog = setTimeout(() => {
  console.error('FAIL: the console test took longer than 240 s');
  process.exit(1);
}, 240_000);

let step = 0;
function log(message) {
  step += 1;
  console.log(`[${String(step).padStart(2, '0')}] ${message}`);
}

/** A partner's FTP session held open (python3 ftplib): uploads a file named
 * like an HTML injection, then 16 MiB files at about 2 MiB/s, one after the
 * other, until it is kicked (so the dashboard and Sessions show live data;
 * the server counts upload progress per 1 MiB it writes). */
function startFtpPartner() {
  const script = `
import ftplib, io, os, sys, time
host, port, user, pw, name = sys.argv[1:6]
ftp = ftplib.FTP()
ftp.connect(host, int(port), timeout=30)
ftp.login(user, pw)
try:
    ftp.mkd('/inbox')
except ftplib.error_perm:
    pass
ftp.storbinary('STOR /inbox/' + name, io.BytesIO(b'hello from the partner\\n'))
print('READY', flush=True)

class Slow(io.RawIOBase):
    def __init__(self, size):
        self.left = size
    def readable(self):
        return True
    def read(self, n=-1):
        if self.left <= 0:
            return b''
        time.sleep(0.03)
        k = min(self.left, n if n > 0 else 65536)
        self.left -= k
        return os.urandom(k)

i = 0
try:
    while True:
        i += 1
        ftp.storbinary('STOR /inbox/part-%d.bin' % i, Slow(16 * 1024 * 1024), blocksize=65536)
except (EOFError, OSError, ftplib.Error) as e:
    print('DISCONNECTED', type(e).__name__, flush=True)
`;
  const child = spawn('python3', ['-c', script, FTP_HOST, FTP_PORT, PARTNER, PARTNER_PASSWORD, XSS], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const waiters = [];
  child.stdout.on('data', (d) => {
    out += d.toString();
    for (const w of waiters.splice(0)) w();
  });
  child.stderr.on('data', (d) => process.stderr.write(`[ftp] ${d}`));
  const exited = new Promise((resolve) => child.on('exit', (code) => resolve(code)));
  return {
    child,
    exited,
    async waitFor(text, ms = 20000) {
      const deadline = Date.now() + ms;
      while (!out.includes(text)) {
        if (Date.now() > deadline) throw new Error(`FTP partner never printed ${text}; output: ${out}`);
        await new Promise((r) => {
          waiters.push(r);
          setTimeout(r, 200);
        });
      }
    },
  };
}

/** One FTP login (python3 ftplib): 'ok' or 'refused'. */
function ftpLogin(user, password) {
  const script = `
import ftplib, sys
ftp = ftplib.FTP()
ftp.connect(sys.argv[1], int(sys.argv[2]), timeout=10)
try:
    ftp.login(sys.argv[3], sys.argv[4])
    ftp.quit()
    print('ok')
except ftplib.error_perm:
    print('refused')
`;
  const r = spawnSync('python3', ['-c', script, FTP_HOST, FTP_PORT, user, password], { encoding: 'utf8', timeout: 20000 });
  return r.stdout.trim() || `error: ${r.stderr}`;
}

/** One FTP upload (python3 ftplib): 'ok' or the error. */
function ftpUpload(user, password, path) {
  const script = `
import ftplib, io, sys
ftp = ftplib.FTP()
ftp.connect(sys.argv[1], int(sys.argv[2]), timeout=10)
ftp.login(sys.argv[3], sys.argv[4])
ftp.storbinary('STOR ' + sys.argv[5], io.BytesIO(b'order 42\\n'))
ftp.quit()
print('ok')
`;
  const r = spawnSync('python3', ['-c', script, FTP_HOST, FTP_PORT, user, password, path], { encoding: 'utf8', timeout: 20000 });
  return r.stdout.trim() || `error: ${r.stderr}`;
}

/** Up to `n` FTP logins with a wrong password (python3 ftplib); stops when
 * the server refuses to talk. Returns how many were made. */
function ftpFailures(n) {
  const script = `
import ftplib, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
done = 0
for _ in range(n):
    try:
        ftp = ftplib.FTP()
        ftp.connect(host, port, timeout=10)
        done += 1
        try:
            ftp.login('${PARTNER}', 'wrong password')
        except ftplib.error_perm:
            pass
        ftp.close()
    except (OSError, EOFError, ftplib.Error):
        break
print(done)
`;
  return new Promise((resolve, reject) => {
    const child = spawn('python3', ['-c', script, FTP_HOST, FTP_PORT, String(n)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d) => {
      out += d.toString();
    });
    child.on('exit', (code) => (code === 0 ? resolve(Number(out.trim())) : reject(new Error(`ftp failures: exit ${code}`))));
  });
}

async function main() {
  mkdirSync(SHOTS, { recursive: true });
  const profile = mkdtempSync(join(tmpdir(), 'dropgate-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1280, height: 860 },
    acceptDownloads: true,
    colorScheme: 'light',
    reducedMotion: 'reduce',
  });
  const problems = [];
  const dialogs = [];
  let ftp = null;
  try {
    const page = context.pages()[0] || (await context.newPage());
    page.setDefaultTimeout(15000);
    page.on('dialog', async (d) => {
      dialogs.push(`${d.type()}: ${d.message()}`);
      await d.dismiss().catch(() => {});
    });
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    // Every API answer the page read, to check that no secret ever came back.
    const apiBodies = [];
    page.on('requestfinished', (req) => {
      if (!req.url().startsWith(`${URL_BASE}/api/`)) return;
      const body = req.response().then(async (res) => {
        if (!res || res.status() === 204) return { url: req.url(), text: '' };
        const text = await Promise.race([res.text(), new Promise((r) => setTimeout(() => r(null), 5000))]);
        return { url: req.url(), text };
      });
      apiBodies.push(body.catch((e) => ({ url: req.url(), text: null, error: String(e) })));
    });
    page.on('console', (m) => {
      if (m.type() === 'error' && !/status of (40[134]|422)/.test(m.text()) && !/favicon/.test(m.text())) problems.push(`console: ${m.text()}`);
    });
    const app = page.locator('#main');
    const shot = async (name) => {
      // Toasts of earlier steps would cover the page.
      await page.evaluate(() => document.querySelectorAll('.toast').forEach((t) => t.remove()));
      await page.waitForTimeout(150);
      await page.screenshot({ path: join(SHOTS, `${name}.png`) });
    };

    // ------------------------------------------------------------ sign in
    const first = await page.goto(URL_BASE + '/');
    const csp = first.headers()['content-security-policy'] || '';
    assert.match(csp, /default-src 'self'/, 'the console has a strict CSP');
    assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/, 'no unsafe-inline in the CSP');
    await page.getByLabel('Admin username').waitFor();
    log('the sign-in form is shown to a visitor without a session');
    await page.getByLabel('Admin username').fill('admin');
    await page.getByLabel('Password').fill('not-the-password');
    await page.keyboard.press('Enter');
    await page.getByText('Wrong username or password.').waitFor();
    log('a wrong password is refused with a message');
    await shot('sign-in');
    // Keyboard only: the password field has the focus after a failure.
    await page.keyboard.type(ADMIN_PASSWORD);
    await page.keyboard.press('Enter');
    await page.getByRole('heading', { name: 'Dashboard' }).waitFor();
    log('signed in with the keyboard only; the dashboard opens');

    const cookies = await context.cookies();
    const session = cookies.find((c) => c.name === 'dropgate_session');
    assert.ok(session, 'the session cookie is set');
    assert.equal(session.httpOnly, true, 'the cookie is HttpOnly');
    assert.equal(session.sameSite, 'Strict', 'the cookie is SameSite=Strict');
    assert.equal(await page.evaluate(() => document.cookie.includes('dropgate_session')), false, 'scripts cannot read the cookie');
    log('the session cookie is HttpOnly and SameSite=Strict');

    // --------------------------------------------------------------- CSRF
    const forged = await page.evaluate(async () => {
      const post = (headers) => fetch('/api/v1/api-keys', { method: 'POST', headers: { 'Content-Type': 'application/json', ...headers }, body: '{"description":"forged"}' }).then((r) => r.status);
      return { none: await post({}), wrong: await post({ 'X-CSRF-Token': 'f'.repeat(64) }) };
    });
    assert.deepEqual(forged, { none: 403, wrong: 403 }, 'writes without the CSRF token are refused');
    const cookieHeader = `dropgate_session=${session.value}`;
    let r = await fetch(`${URL_BASE}/api/v1/users/nobody`, { method: 'DELETE', headers: { Cookie: cookieHeader } });
    assert.equal(r.status, 403, 'a cookie-authenticated DELETE without the CSRF header is refused');
    r = await fetch(`${URL_BASE}/api/v1/status`, { headers: { Cookie: cookieHeader } });
    assert.equal(r.status, 200, 'reads with the cookie work');
    log('a write with the cookie but without the CSRF token gets 403');

    // ------------------------------------------- create the partner account
    await page.getByRole('link', { name: 'Accounts' }).click();
    await page.getByRole('heading', { name: 'Accounts' }).waitFor();
    await page.getByRole('link', { name: 'New account' }).click();
    await page.getByRole('heading', { name: 'New account' }).waitFor();
    await app.getByLabel('Username').fill(PARTNER);
    await app.getByLabel('Password', { exact: true }).fill(PARTNER_PASSWORD);
    await app.getByLabel('Description').fill(XSS);
    // Root: list only; /inbox: list, upload, mkdir.
    const rows = app.locator('.perm-row:not(.perm-head)');
    await rows.nth(0).getByLabel('all').uncheck();
    await rows.nth(0).getByLabel('list').check();
    for (const p of ['download', 'upload', 'overwrite', 'delete', 'rename', 'mkdir', 'rmdir', 'chtimes']) await rows.nth(0).getByLabel(p, { exact: true }).uncheck();
    await page.getByRole('button', { name: 'Add path' }).click();
    await rows.nth(1).getByRole('textbox', { name: 'Path' }).fill('/inbox');
    for (const p of ['upload', 'mkdir']) await rows.nth(1).getByLabel(p, { exact: true }).check();
    await app.getByLabel('Quota: files').fill('1000');
    await app.getByLabel('Allowed networks, one CIDR per line').fill('127.0.0.0/8\n::1/128');
    await page.getByRole('button', { name: 'Create account' }).click();
    await page.getByRole('heading', { name: `Account ${PARTNER}` }).waitFor();
    assert.equal(await app.getByLabel('Description').inputValue(), XSS);
    log('created the partner account with an inbox permission from the form');

    // The API holds exactly what the form said.
    const bearer = await (await fetch(`${URL_BASE}/api/v1/auth/token`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ username: 'admin', password: ADMIN_PASSWORD }) })).json();
    const auth = { Authorization: `Bearer ${bearer.token}` };
    const user = await (await fetch(`${URL_BASE}/api/v1/users/${PARTNER}`, { headers: auth })).json();
    assert.deepEqual(user.permissions, { '/': ['list'], '/inbox': ['list', 'upload', 'mkdir'] });
    assert.deepEqual(user.allowed_ips, ['127.0.0.0/8', '::1/128']);
    assert.equal(user.quota.max_files, 1000);
    assert.equal(user.description, XSS);
    log('bearer tokens keep working for scripts, and the account is as entered');

    // --------------------------------------- the partner logs in over FTP
    ftp = startFtpPartner();
    await ftp.waitFor('READY');
    log('the partner logged in over FTP and uploaded a file named like HTML');
    await page.getByRole('link', { name: 'Dashboard' }).click();
    const connected = page.locator('section', { has: page.getByRole('heading', { name: 'Connected now' }) });
    await connected.getByRole('link', { name: PARTNER }).waitFor();
    await connected.getByText('FTP', { exact: true }).first().waitFor();
    // Let the charts gather some seconds of uploads.
    await page.waitForTimeout(12000);
    log('the dashboard shows the FTP session live');
    await shot('dashboard');

    // -------------------------------------------------------- sessions, kick
    await page.getByRole('link', { name: 'Sessions' }).click();
    await page.getByRole('heading', { name: 'Sessions' }).waitFor();
    const kick = page.getByRole('button', { name: new RegExp(`^Disconnect ${PARTNER} \\(ftp`) });
    await kick.waitFor();
    // The upload in progress, with its rate.
    await app.getByRole('cell', { name: /^Upload \/inbox\/part-\d+\.bin/ }).waitFor();
    await app.getByRole('cell', { name: /^[\d.]+ [KM]iB\/s$/ }).waitFor();
    await shot('sessions');
    await kick.click();
    await page.getByRole('dialog').getByRole('button', { name: 'Disconnect' }).click();
    await page.getByText('Nobody is connected right now.').waitFor();
    const code = await Promise.race([ftp.exited, new Promise((r) => setTimeout(() => r('still running'), 10000))]);
    assert.notEqual(code, 'still running', 'the FTP client was disconnected');
    log('kicked the FTP session from the Sessions page; the client was cut off');

    // ------------------------------------------------------------ audit log
    await page.getByRole('link', { name: 'Audit log' }).click();
    await page.getByRole('heading', { name: 'Audit log' }).waitFor();
    await app.getByLabel('Account').fill(PARTNER);
    await app.getByLabel('Kind').selectOption('upload');
    await page.getByRole('button', { name: 'Apply' }).click();
    const cell = page.getByRole('cell', { name: `/inbox/${XSS}`, exact: true });
    await cell.waitFor();
    log('the upload is in the audit log, its name shown as text');
    await shot('audit-log');
    const [download] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'Export CSV' }).click()]);
    const csv = readFileSync(await download.path(), 'utf8');
    assert.match(csv.split('\r\n')[0], /^id,time,kind,username/);
    assert.ok(csv.includes(`/inbox/${XSS}`), 'the CSV holds the upload');
    assert.ok(csv.split('\r\n').slice(1).filter(Boolean).every((l) => l.includes(',upload,acme,')), 'the CSV follows the filter');
    log(`exported the filtered audit log as CSV (${csv.split('\r\n').length - 2} rows)`);

    // ----------------------------------------------------------- event rules
    const started = Date.now();
    const SECRET = `whsec-${randomBytes(16).toString('hex')}`;
    const RULE = `hook ${XSS}`;
    const HOOKED = `/inbox/hook ${XSS}.txt`;
    await page.getByRole('link', { name: 'Event rules' }).click();
    await page.getByRole('heading', { name: 'Event rules', level: 1 }).waitFor();
    await app.getByText('No event rules yet. Create the first one.').waitFor();
    await app.getByRole('link', { name: 'New rule' }).click();
    await page.getByRole('heading', { name: 'New event rule' }).waitFor();
    await app.getByLabel('Name', { exact: true }).fill(RULE);
    await app.getByLabel('Trigger', { exact: true }).selectOption('upload');
    await app.getByLabel('Accounts, one per line').fill(PARTNER);
    await app.getByLabel('Path globs, one per line').fill('/inbox/**');
    await app.getByLabel('FTP', { exact: true }).check();
    await app.getByLabel('Action type').selectOption('webhook');
    // Every action type of SPEC 8 has its fields; schedule asks for a period.
    for (const [type, label] of [['command', 'Program and arguments, one per line'], ['move', 'Move or copy to'], ['copy', 'Move or copy to'], ['retention', 'Older than (days)'], ['webhook', 'URL']]) {
      await app.getByLabel('Action type').selectOption(type);
      assert.ok(await app.getByLabel(label, { exact: true }).isVisible(), `${type} shows ${label}`);
    }
    assert.equal(await app.getByLabel('Trigger', { exact: true }).inputValue(), 'schedule', 'retention chose the schedule trigger');
    assert.ok(await app.getByLabel('Every', { exact: true }).isVisible(), 'a schedule asks for its period');
    await app.getByLabel('Trigger', { exact: true }).selectOption('upload');
    assert.equal(await app.getByLabel('Every', { exact: true }).isVisible(), false);
    // A URL the server refuses: its 422 is shown at the URL field.
    await app.getByLabel('URL', { exact: true }).fill('ftp://127.0.0.1/hook');
    await app.getByLabel('Secret', { exact: true }).fill(SECRET);
    await app.getByLabel('Webhook timeout (seconds)').fill('3');
    await app.getByRole('button', { name: 'Create rule' }).click();
    const urlField = app.locator('.field', { has: page.getByLabel('URL', { exact: true }) });
    await urlField.locator('.field-error').getByText(/http or https/).waitFor();
    assert.equal(await app.getByLabel('URL', { exact: true }).getAttribute('aria-invalid'), 'true');
    assert.equal(await page.evaluate(() => document.activeElement.name), 'url', 'the field named by the 422 has the focus');
    log('the rule form covers every trigger and action; a 422 is shown at the field it names');
    // Loopback is not allowed in this configuration: the delivery fails.
    await app.getByLabel('URL', { exact: true }).fill('http://127.0.0.1:9/');
    await app.getByRole('button', { name: 'Create rule' }).click();
    await page.getByRole('heading', { name: 'Event rules', level: 1 }).waitFor();
    await app.getByRole('link', { name: RULE, exact: true }).waitFor();
    await app.getByRole('cell', { name: 'webhook http://127.0.0.1:9/', exact: true }).waitFor();
    await app.getByRole('cell', { name: `accounts: ${PARTNER} · paths: /inbox/** · protocols: FTP`, exact: true }).waitFor();
    const rules = await (await fetch(`${URL_BASE}/api/v1/event-rules`, { headers: auth })).json();
    assert.equal(rules.items.length, 1);
    const rule = rules.items[0];
    assert.deepEqual(
      { name: rule.name, trigger: rule.trigger, enabled: rule.enabled, filter: rule.filter, action: rule.action },
      { name: RULE, trigger: 'upload', enabled: true, filter: { usernames: [PARTNER], path_globs: ['/inbox/**'], protocols: ['ftp'] }, action: { type: 'webhook', url: 'http://127.0.0.1:9/', timeout_secs: 3 } },
    );
    log('created a webhook rule named like HTML from the form; the list shows it as text');

    // A command rule (argv one per line) whose long output is clipped until expanded.
    const COUNT = 'count to 200';
    await app.getByRole('link', { name: 'New rule' }).click();
    await page.getByRole('heading', { name: 'New event rule' }).waitFor();
    await app.getByLabel('Name', { exact: true }).fill(COUNT);
    await app.getByLabel('Path globs, one per line').fill('/inbox/**');
    await app.getByLabel('Action type').selectOption('command');
    await app.getByLabel('Program and arguments, one per line').fill('/usr/bin/seq\n1\n200');
    await app.getByRole('button', { name: 'Create rule' }).click();
    await app.getByRole('cell', { name: 'command /usr/bin/seq 1 200', exact: true }).waitFor();

    assert.equal(ftpUpload(PARTNER, PARTNER_PASSWORD, HOOKED), 'ok', 'the partner uploads over FTP');
    // One rule's deliveries, then all of them by status.
    const deliveryRow = (rule) => app.locator('.deliveries tbody tr', { has: page.getByText(HOOKED, { exact: true }) }).filter({ has: page.locator('td[data-label="Rule"]', { hasText: rule }) });
    await app.getByRole('button', { name: `Show deliveries of ${RULE}`, exact: true }).click();
    const hook = deliveryRow(RULE);
    await hook.getByRole('cell', { name: 'failed', exact: true }).waitFor();
    assert.equal(await app.locator('.deliveries tbody tr').count(), 1, 'only this rule’s delivery is listed');
    const lastError = await hook.locator('td[data-label="Last error"]').textContent();
    assert.match(lastError, /refused/, 'the SSRF rules refused the loopback receiver');
    assert.equal(await hook.locator('td[data-label="Rule"]').textContent(), RULE);
    assert.equal(await hook.locator('td[data-label="Attempts"]').textContent(), '1');
    await app.getByLabel('Delivery status').selectOption('succeeded');
    await app.getByText('No delivery matches.').waitFor();
    await app.getByLabel('Rule', { exact: true }).selectOption('');
    const count = deliveryRow(COUNT);
    await count.getByRole('cell', { name: 'succeeded', exact: true }).waitFor();
    const output = count.locator('td[data-label="Output"] pre');
    assert.equal(await output.textContent(), '1…', 'long output is clipped');
    await count.getByRole('button', { name: /^Full output of delivery / }).click();
    assert.equal((await output.textContent()).trim().split('\n').length, 200, 'expanded, the whole output shows');
    await app.getByLabel('Delivery status').selectOption('failed');
    await hook.waitFor();
    await app.getByLabel('Delivery status').selectOption('');
    await count.waitFor();
    assert.equal((await output.textContent()).trim().split('\n').length, 200, 'it stays expanded when the table is drawn again');
    await count.getByRole('button', { name: /^Full output of delivery / }).click();
    assert.equal(await output.textContent(), '1…');
    assert.equal(await page.evaluate(() => document.querySelectorAll('#main img').length), 0, 'no element was made from the data');
    await page.evaluate(() => {
      document.activeElement.blur();
      for (const wrap of document.querySelectorAll('.table-wrap')) wrap.scrollLeft = 0;
      window.scrollTo(0, 0);
    });
    await shot('event-rules');
    log(`an FTP upload fired both rules: the webhook failed ("${lastError.trim()}"), the command's output expands`);

    // Edit: the secret field is empty, and saving leaves the secret as it is.
    // The first link is in the rule list, the others in the deliveries.
    await app.getByRole('link', { name: RULE, exact: true }).first().click();
    await page.getByRole('heading', { name: `Event rule ${RULE}` }).waitFor();
    assert.equal(await app.getByLabel('Secret', { exact: true }).inputValue(), '', 'the secret is never filled in');
    assert.equal(await app.getByLabel('Secret', { exact: true }).getAttribute('type'), 'password');
    await app.getByText('Leave empty to keep the current secret.', { exact: false }).waitFor();
    await app.locator('.deliveries').getByRole('cell', { name: 'failed', exact: true }).waitFor();
    // Tall enough to show the secret's hint and the rule's deliveries.
    await page.setViewportSize({ width: 1280, height: 1360 });
    await shot('event-rule-edit');
    await page.setViewportSize({ width: 1280, height: 860 });
    await app.getByLabel('Webhook timeout (seconds)').fill('7');
    const [put] = await Promise.all([
      page.waitForResponse((res) => res.request().method() === 'PUT' && res.url().includes('/api/v1/event-rules/')),
      app.getByRole('button', { name: 'Save changes' }).click(),
    ]);
    assert.equal(put.status(), 200);
    const sent = JSON.parse(put.request().postData());
    assert.equal('secret' in sent.action, false, 'an edit without a new secret sends none, so the server keeps it');
    assert.equal(sent.action.timeout_secs, 7);
    await page.getByRole('heading', { name: 'Event rules', level: 1 }).waitFor();
    log('edited the rule (the secret field empty, the secret kept)');

    // Disable, then delete with confirmation.
    await app.getByRole('button', { name: `Disable rule ${RULE}`, exact: true }).click();
    await app.getByRole('button', { name: `Enable rule ${RULE}`, exact: true }).waitFor();
    await app.getByText('Disabled', { exact: true }).waitFor();
    const disabled = await (await fetch(`${URL_BASE}/api/v1/event-rules/${rule.id}`, { headers: auth })).json();
    assert.equal(disabled.enabled, false);
    assert.equal(disabled.action.timeout_secs, 7);
    await app.getByRole('button', { name: `Delete rule ${RULE}`, exact: true }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Delete rule' }).click();
    await app.getByRole('link', { name: RULE, exact: true }).first().waitFor({ state: 'detached' });
    assert.equal((await fetch(`${URL_BASE}/api/v1/event-rules/${rule.id}`, { headers: auth })).status, 404);
    // The other one from its editor.
    await app.getByRole('link', { name: COUNT, exact: true }).first().click();
    await page.getByRole('heading', { name: `Event rule ${COUNT}` }).waitFor();
    assert.equal(await app.getByLabel('Program and arguments, one per line').inputValue(), '/usr/bin/seq\n1\n200');
    await app.getByRole('button', { name: 'Delete…' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Delete rule' }).click();
    await app.getByText('No event rules yet. Create the first one.').waitFor();
    log('disabled a rule, deleted it from the list and the other from its editor, each after confirming');

    // The secret went to the server once and never came back.
    const dom = await page.evaluate(() => document.documentElement.outerHTML + [...document.querySelectorAll('input, textarea')].map((el) => el.value).join('\n'));
    assert.equal(dom.includes(SECRET), false, 'the secret is not in the page');
    const answers = await Promise.all(apiBodies);
    assert.ok(answers.some((a) => a.url.includes('/api/v1/event-deliveries')), 'the page fetched deliveries');
    assert.deepEqual(answers.filter((a) => a.text === null), [], 'every API answer could be read');
    assert.deepEqual(answers.filter((a) => a.text.includes(SECRET)).map((a) => a.url), [], 'no API answer holds the secret');
    log(`the webhook secret is in no API answer (${answers.length} checked) and not in the page; event rules took ${((Date.now() - started) / 1000).toFixed(1)} s`);

    // ------------------------------------------------------------- accounts
    await page.getByRole('link', { name: 'Accounts' }).click();
    await page.getByLabel('Search accounts').fill('onerror');
    await page.getByRole('link', { name: PARTNER }).waitFor();
    await page.getByLabel('Search accounts').fill('');
    await page.getByRole('link', { name: PARTNER }).waitFor();
    await shot('accounts');
    log('the account list finds the partner by its description');
    await page.getByRole('link', { name: PARTNER }).click();
    await page.getByRole('heading', { name: `Account ${PARTNER}` }).waitFor();
    const unlabelled = await page.evaluate(() =>
      [...document.querySelectorAll('#main input, #main select, #main textarea')]
        .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label'))
        .map((el) => el.outerHTML),
    );
    assert.deepEqual(unlabelled, [], 'every control of the account editor has a label');
    await shot('account-edit');

    // Session expiry in the middle of an edit: the form survives.
    await app.getByLabel('Upload bandwidth (KiB/s)').fill('512');
    await context.clearCookies();
    await page.getByRole('button', { name: 'Save changes' }).click();
    await page.getByText('Your session has expired').waitFor();
    log('an expired session asks to sign in again, over the page');
    await page.locator('#signin').getByLabel('Password').fill(ADMIN_PASSWORD);
    await page.locator('#signin').getByRole('button', { name: 'Sign in' }).click();
    await page.getByText(`Account ${PARTNER} saved.`).waitFor();
    const saved = await (await fetch(`${URL_BASE}/api/v1/users/${PARTNER}`, { headers: auth })).json();
    assert.equal(saved.bandwidth.upload_kib_s, 512, 'the edit made before the expiry was saved');
    log('after signing in again the pending save went through; nothing typed was lost');

    // A public key loaded from a .pub file.
    const keyDir = mkdtempSync(join(tmpdir(), 'dropgate-key-'));
    const made = spawnSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'partner@laptop', '-f', join(keyDir, 'id_ed25519')]);
    assert.equal(made.status, 0, 'ssh-keygen (openssh-client) makes a key');
    await app.getByLabel('Add keys from a file').setInputFiles(join(keyDir, 'id_ed25519.pub'));
    await page.waitForFunction(() => document.querySelector('textarea[name=public_keys]').value.startsWith('ssh-ed25519 '));
    // The toast of the save before is still up: wait for this save's own
    // answer, not for the text (a fetch racing the PATCH read 0 keys).
    const [patched] = await Promise.all([
      page.waitForResponse((res) => res.request().method() === 'PATCH' && res.url().includes(`/api/v1/users/${PARTNER}`)),
      app.getByRole('button', { name: 'Save changes' }).click(),
    ]);
    assert.equal(patched.status(), 200);
    await page.getByText(`Account ${PARTNER} saved.`).first().waitFor();
    const withKey = await (await fetch(`${URL_BASE}/api/v1/users/${PARTNER}`, { headers: auth })).json();
    assert.equal(withKey.public_keys.length, 1);
    assert.ok(withKey.public_keys[0].endsWith('partner@laptop'));
    rmSync(keyDir, { recursive: true, force: true });
    log('an SSH public key was loaded from a .pub file and saved');

    // Reset the password: the new one works over FTP.
    await app.getByRole('button', { name: 'Reset password' }).click();
    const newPassword = await page.getByRole('dialog').getByLabel('New password').inputValue();
    assert.ok(newPassword.length >= 16, 'a strong password is suggested');
    await page.getByRole('dialog').getByRole('button', { name: 'Set password' }).click();
    await page.getByText(`New password set for ${PARTNER}.`).waitFor();
    assert.equal(await ftpLogin(PARTNER, newPassword), 'ok', 'the new password logs in over FTP');
    assert.equal(await ftpLogin(PARTNER, PARTNER_PASSWORD), 'refused', 'the old one no longer does');
    log('reset the password from the console; FTP takes the new one only');

    // Disable, then delete with its files.
    await app.getByRole('button', { name: 'Disable' }).click();
    await app.getByText('Disabled', { exact: true }).waitFor();
    assert.equal((await (await fetch(`${URL_BASE}/api/v1/users/${PARTNER}`, { headers: auth })).json()).enabled, false);
    await app.getByRole('button', { name: 'Delete…' }).click();
    await page.getByRole('dialog').getByLabel(/Also delete its files/).check();
    await page.getByRole('dialog').getByRole('button', { name: 'Delete account' }).click();
    await app.getByText('No accounts yet. Create the first one.').waitFor();
    assert.equal((await fetch(`${URL_BASE}/api/v1/users/${PARTNER}`, { headers: auth })).status, 404);
    log('disabled the account, then deleted it with its files');

    // ------------------------------------------------------------- API keys
    await page.getByRole('link', { name: 'API keys' }).click();
    await page.getByRole('heading', { name: 'API keys' }).waitFor();
    await page.getByLabel('Description of the new key').fill(`deploy ${XSS}`);
    await page.getByRole('button', { name: 'Create key' }).click();
    const keyInput = page.getByLabel('The new API key');
    await keyInput.waitFor();
    const key = await keyInput.inputValue();
    assert.match(key, /^dgk_[0-9a-f]{64}$/);
    await page.getByRole('button', { name: 'Done' }).click();
    r = await fetch(`${URL_BASE}/api/v1/status`, { headers: { Authorization: `Bearer ${key}` } });
    assert.equal(r.status, 200, 'the new key works');
    await page.getByRole('cell', { name: `deploy ${XSS}` }).waitFor();
    await shot('api-keys');
    await page.getByRole('button', { name: /^Revoke key / }).first().click();
    await page.getByRole('dialog').getByRole('button', { name: 'Revoke key' }).click();
    await page.getByText('No API keys.').waitFor();
    r = await fetch(`${URL_BASE}/api/v1/status`, { headers: { Authorization: `Bearer ${key}` } });
    assert.equal(r.status, 401, 'the revoked key no longer works');
    log('created an API key (shown once), used it, revoked it');

    // ------------------------------------------------------- bans, status
    const bansLink = page.getByRole('link', { name: 'Bans' });
    if (await bansLink.isVisible()) {
      // Get this address banned with wrong FTP passwords, then lift the ban.
      const failures = await ftpFailures(12);
      await bansLink.click();
      await page.getByRole('heading', { name: 'Bans' }).waitFor();
      const lift = page.getByRole('button', { name: /^Lift the ban on / });
      for (let i = 0; i < 10 && !(await lift.count()); i += 1) {
        await page.waitForTimeout(500);
        await page.getByRole('button', { name: 'Refresh' }).click();
      }
      assert.ok(await lift.count(), `no ban listed after ${failures} failed FTP logins`);
      await shot('bans');
      await lift.first().click();
      await page.getByRole('dialog').getByRole('button', { name: 'Lift ban' }).click();
      await page.getByText('No address is banned.').waitFor();
      log(`${failures} failed FTP logins banned this address; the Bans page listed and lifted the ban`);
    } else {
      await page.goto(URL_BASE + '/#/bans');
      await page.getByText('Bans are not available on this server version.').waitFor();
      log('this server has no ban API: the Bans page is hidden and says so when opened');
    }
    await page.getByRole('link', { name: 'Status' }).click();
    await page.getByRole('heading', { name: 'Status' }).waitFor();
    await page.getByRole('cell', { name: new RegExp(`^${FTP_HOST}:${FTP_PORT}$`) }).waitFor();
    await shot('status');
    log('the Status page shows the version and listeners');

    // ------------------------------------------------------------ phone
    await page.setViewportSize({ width: 390, height: 844 });
    await page.getByRole('button', { name: 'Menu' }).click();
    await page.getByRole('link', { name: 'Dashboard' }).click();
    await page.getByRole('heading', { name: 'Dashboard' }).waitFor();
    await page.waitForTimeout(2500);
    await shot('dashboard-phone');
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 1, `no sideways scrolling at phone width (overflow ${overflow}px)`);
    log('at phone width the menu folds away and nothing overflows');
    await page.setViewportSize({ width: 1280, height: 860 });

    // ------------------------------------------------------------ sign out
    const before = (await context.cookies()).find((c) => c.name === 'dropgate_session');
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByText('You have signed out.').waitFor();
    r = await fetch(`${URL_BASE}/api/v1/auth/session`, { headers: { Cookie: `dropgate_session=${before.value}` } });
    assert.equal(r.status, 401, 'the signed-out session no longer works');
    assert.equal((await context.cookies()).some((c) => c.name === 'dropgate_session'), false, 'the cookie is gone');
    log('signed out: the cookie is removed and its token ended');

    // ------------------------------------------------------------ no script ran
    assert.deepEqual(dialogs, [], 'no script from the data ran (no alert)');
    assert.deepEqual(problems, [], 'no page errors or CSP violations');
    log('no alert fired and no CSP violation or script error was reported');
  } finally {
    if (ftp && ftp.child.exitCode === null) ftp.child.kill();
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  }
}

main().then(
  () => {
    clearTimeout(watchdog);
    console.log('PASS: the console works end to end');
    process.exit(0);
  },
  (e) => {
    clearTimeout(watchdog);
    console.error(`FAIL: ${e && e.stack ? e.stack : e}`);
    process.exit(1);
  },
);
