// The console's shell: sign-in, navigation between pages (hash routes), and
// the session-expiry flow. Each page module exports
//   render(main, ctx) -> optional cleanup function
// and is given ctx = {caps, route, params, navigate}.

import { ApiError, capabilities, currentSession, onSessionExpired, signIn, signOut } from './api.js';
import { clear, errorText, h, toast } from './ui.js';
import * as dashboard from './dashboard.js';
import * as accounts from './accounts.js';
import * as sessions from './sessions.js';
import * as audit from './audit.js';
import * as rules from './rules.js';
import * as apikeys from './apikeys.js';
import * as bans from './bans.js';
import * as status from './status.js';

const PAGES = {
  dashboard: { title: 'Dashboard', module: dashboard },
  accounts: { title: 'Accounts', module: accounts },
  sessions: { title: 'Sessions', module: sessions },
  audit: { title: 'Audit log', module: audit },
  'event-rules': { title: 'Event rules', module: rules, needs: 'eventRules' },
  'api-keys': { title: 'API keys', module: apikeys },
  bans: { title: 'Bans', module: bans, needs: 'bans' },
  status: { title: 'Status', module: status },
};

const shell = document.getElementById('shell');
const main = document.getElementById('main');
const nav = document.getElementById('nav');
const navToggle = document.getElementById('nav-toggle');
const whoami = document.getElementById('whoami');
const signinBox = document.getElementById('signin');
const signinForm = document.getElementById('signin-form');
const signinMsg = document.getElementById('signin-msg');

let caps = { bans: false, maxSessions: false, usage: false, eventRules: false };
let cleanup = null;
let signedIn = false;
// While the session is being renewed: the requests waiting for it.
let renewal = null;
let renewalDone = null;

function showSignin(message, kind = 'info') {
  signinBox.hidden = false;
  if (message) {
    signinMsg.textContent = message;
    signinMsg.className = `notice ${kind}`;
    signinMsg.hidden = false;
  } else {
    signinMsg.hidden = true;
  }
  // Keep whatever page is open (and any half-filled form) behind the dialog.
  shell.inert = true;
  const user = signinForm.elements.namedItem('username');
  const pass = signinForm.elements.namedItem('password');
  pass.value = '';
  (user.value ? pass : user).focus();
}

function hideSignin() {
  signinBox.hidden = true;
  signinMsg.hidden = true;
  shell.inert = false;
}

signinForm.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const button = signinForm.querySelector('button[type=submit]');
  const username = signinForm.elements.namedItem('username').value.trim();
  const password = signinForm.elements.namedItem('password').value;
  button.disabled = true;
  try {
    const s = await signIn(username, password);
    signinForm.elements.namedItem('password').value = '';
    hideSignin();
    await enter(s);
  } catch (e) {
    let message = errorText(e);
    if (e instanceof ApiError && e.status === 401) message = 'Wrong username or password.';
    if (e instanceof ApiError && e.status === 429) message = `Too many failed sign-ins from this address. ${e.message}`;
    showSignin(message, 'error');
  } finally {
    button.disabled = false;
  }
});

// A request met 401 in the middle of work: ask for the password again,
// keep the page as it is, and let the request go on afterwards.
onSessionExpired(() => {
  if (!signedIn) return Promise.reject(new ApiError(401, 'unauthorized', 'Not signed in', null));
  if (!renewal) {
    renewal = new Promise((resolve) => {
      renewalDone = resolve;
    });
    showSignin('Your session has expired. Sign in again to continue where you were.', 'warn');
  }
  return renewal;
});

async function enter(session) {
  whoami.textContent = session.username;
  if (renewal) {
    const resolve = renewalDone;
    renewal = null;
    renewalDone = null;
    resolve();
    return;
  }
  signedIn = true;
  shell.hidden = false;
  caps = await capabilities();
  for (const link of nav.querySelectorAll('a[data-page]')) {
    const page = PAGES[link.dataset.page];
    link.hidden = Boolean(page && page.needs && !caps[page.needs]);
  }
  route();
}

document.getElementById('signout').addEventListener('click', async () => {
  try {
    await signOut();
  } catch (e) {
    toast(errorText(e), 'error');
  }
  leave('You have signed out.');
});

function leave(message) {
  signedIn = false;
  if (cleanup) cleanup();
  cleanup = null;
  clear(main);
  shell.hidden = true;
  showSignin(message);
}

navToggle.addEventListener('click', () => {
  const open = navToggle.getAttribute('aria-expanded') !== 'true';
  navToggle.setAttribute('aria-expanded', String(open));
  nav.classList.toggle('open', open);
});

export function navigate(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function route() {
  if (!signedIn) return;
  const parts = (location.hash.replace(/^#\/?/, '') || 'dashboard').split('/').map(decodeURIComponent);
  let name = parts[0];
  let page = PAGES[name];
  if (!page) {
    name = 'dashboard';
    page = PAGES.dashboard;
  }
  if (cleanup) cleanup();
  cleanup = null;
  clear(main);
  for (const link of nav.querySelectorAll('a[data-page]')) {
    if (link.dataset.page === name) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  nav.classList.remove('open');
  navToggle.setAttribute('aria-expanded', 'false');
  document.title = `${page.title} · dropgate`;
  try {
    cleanup = page.module.render(main, { caps, params: parts.slice(1), navigate }) || null;
  } catch (e) {
    main.append(h('p', { class: 'notice error', role: 'alert' }, errorText(e)));
  }
  const heading = main.querySelector('h1');
  if (heading) heading.focus({ preventScroll: false });
}

window.addEventListener('hashchange', route);

(async function start() {
  try {
    const s = await currentSession();
    if (s) await enter(s);
    else showSignin(null);
  } catch (e) {
    showSignin(errorText(e), 'error');
  }
})();
