// The console's only way to the server: the REST API of SPEC section 7.
//
// The login token lives in an HttpOnly cookie this code never sees; every
// write carries the CSRF token the server handed out at sign-in. A 401 in the
// middle of work (the session expired) asks the app to sign in again and then
// repeats the request once, so nothing the operator typed is lost.

let csrfToken = null;
let reauthenticate = null;

/** An error answer of the API: {"error": {"code", "message", "field"}}. */
export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field || null;
  }
}

/** Called with no argument when a request meets 401; returns a promise that
 * resolves once the admin has signed in again. */
export function onSessionExpired(handler) {
  reauthenticate = handler;
}

export function setCsrfToken(token) {
  csrfToken = token || null;
}

async function decodeError(res) {
  let code = 'error';
  let message = `${res.status} ${res.statusText}`;
  let field = null;
  try {
    const body = await res.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
      field = body.error.field || null;
    }
  } catch {
    // Not JSON: keep the status line.
  }
  return new ApiError(res.status, code, message, field);
}

/** One API call; resolves to the decoded JSON (or null for 204). */
export async function request(method, path, body, { retryOn401 = true } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && method !== 'HEAD' && csrfToken) headers['X-CSRF-Token'] = csrfToken;
  let res;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
      cache: 'no-store',
    });
  } catch (e) {
    throw new ApiError(0, 'network', 'The gateway cannot be reached. Is it running?', null);
  }
  if (res.status === 401 && retryOn401 && reauthenticate && !path.startsWith('/api/v1/auth/')) {
    await reauthenticate();
    return request(method, path, body, { retryOn401: false });
  }
  if (!res.ok) throw await decodeError(res);
  if (res.status === 204) return null;
  const type = res.headers.get('content-type') || '';
  return type.startsWith('application/json') ? res.json() : res.text();
}

export const api = {
  get: (path) => request('GET', path),
  post: (path, body) => request('POST', path, body === undefined ? {} : body),
  put: (path, body) => request('PUT', path, body),
  patch: (path, body) => request('PATCH', path, body),
  del: (path) => request('DELETE', path),
};

/** Builds "path?a=1&b=2" from the defined, non-empty values. */
export function withQuery(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

export const enc = encodeURIComponent;

// ---------------------------------------------------------------- session

/** The current session, or null when not signed in. */
export async function currentSession() {
  try {
    const s = await request('GET', '/api/v1/auth/session', undefined, { retryOn401: false });
    setCsrfToken(s.csrf_token);
    return s;
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return null;
    throw e;
  }
}

export async function signIn(username, password) {
  const s = await request('POST', '/api/v1/auth/session', { username, password }, { retryOn401: false });
  setCsrfToken(s.csrf_token);
  return s;
}

export async function signOut() {
  try {
    await request('DELETE', '/api/v1/auth/session', undefined, { retryOn401: false });
  } finally {
    setCsrfToken(null);
  }
}

// ----------------------------------------------------------- capabilities

/** What this server offers beyond the first API version, read from its
 * OpenAPI document (routes and fields that arrived later). */
export async function capabilities() {
  const caps = { bans: false, maxSessions: false, usage: false, eventRules: false };
  try {
    const doc = await request('GET', '/api/v1/openapi.json', undefined, { retryOn401: false });
    const paths = (doc && doc.paths) || {};
    const schemas = (doc && doc.components && doc.components.schemas) || {};
    const props = (name) => (schemas[name] && schemas[name].properties) || {};
    caps.bans = Boolean(paths['/api/v1/bans'] && paths['/api/v1/bans'].get);
    caps.eventRules = Boolean(paths['/api/v1/event-rules'] && paths['/api/v1/event-rules'].get);
    caps.maxSessions = 'max_sessions' in props('NewUser') || 'max_sessions' in props('UserPatch');
    caps.usage = 'usage' in props('User');
  } catch {
    // An older server without a document: the basics only.
  }
  return caps;
}

// ------------------------------------------------------------- metrics

/** Sums of the Prometheus counters the dashboard charts, from /metrics. */
export async function metricTotals() {
  const res = await fetch('/metrics', { cache: 'no-store', credentials: 'same-origin' });
  if (!res.ok) throw new ApiError(res.status, 'error', 'metrics unavailable', null);
  const text = await res.text();
  const totals = { bytesUp: 0, bytesDown: 0, transfers: 0, loginsFailed: 0, loginsOk: 0 };
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-z_]+)\{([^}]*)\}\s+([0-9.eE+-]+)$/.exec(line.trim());
    if (!m) continue;
    const [, name, labels, raw] = m;
    const value = Number(raw);
    if (!Number.isFinite(value)) continue;
    if (name === 'dropgate_bytes_total') {
      if (labels.includes('direction="upload"')) totals.bytesUp += value;
      else totals.bytesDown += value;
    } else if (name === 'dropgate_transfers_total') {
      totals.transfers += value;
    } else if (name === 'dropgate_logins_total') {
      if (labels.includes('outcome="ok"')) totals.loginsOk += value;
      else totals.loginsFailed += value;
    }
  }
  return totals;
}
