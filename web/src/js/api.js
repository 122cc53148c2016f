// The proxy's JSON API (/v1/webapi/, docs/http-api.md) as seen from the browser.
//
// The session cookie is HttpOnly, so this module never sees it; what it keeps is
// the login document (user, logins, csrf_token, expires) in memory. Every
// state-changing request carries the CSRF token in X-CSRF-Token, as the proxy
// requires. Errors come back as ApiError with the HTTP status and the server's
// {"error": {"kind", "message"}}.

export class ApiError extends Error {
  constructor(status, kind, message) {
    super(message);
    this.status = status;
    this.kind = kind;
  }
}

let session = null; // the login document, or null when logged out
const listeners = new Set();

/** The current login document ({user, csrf_token, expires, logins, roles}) or null. */
export function currentSession() {
  return session;
}

/** Call fn(doc-or-null) whenever the session changes (login, logout, expiry). */
export function onSessionChange(fn) {
  listeners.add(fn);
}

function setSession(doc) {
  session = doc;
  for (const fn of listeners) fn(doc);
}

/** Forget the session locally (the server already has: it answered 401). */
export function dropSession() {
  if (session !== null) setSession(null);
}

async function request(method, path, body) {
  const headers = { Accept: "application/json" };
  const init = { method, headers, credentials: "same-origin", cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  if (method !== "GET" && session && session.csrf_token) {
    headers["X-CSRF-Token"] = session.csrf_token;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, "network", "The proxy cannot be reached: " + err.message);
  }
  let doc = null;
  const text = await response.text();
  if (text) {
    try {
      doc = JSON.parse(text);
    } catch {
      doc = null;
    }
  }
  if (!response.ok) {
    const error = (doc && doc.error) || {};
    throw new ApiError(
      response.status,
      error.kind || "http_" + response.status,
      error.message || `${response.status} ${response.statusText}`,
    );
  }
  return doc || {};
}

function query(params) {
  const parts = [];
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") {
      parts.push(encodeURIComponent(key) + "=" + encodeURIComponent(value));
    }
  }
  return parts.length ? "?" + parts.join("&") : "";
}

// --- web session ------------------------------------------------------------------

/** Ask the proxy whether our cookie is still a session; the document or null. */
export async function resume() {
  try {
    setSession(await request("GET", "/v1/webapi/sessions/web"));
  } catch (err) {
    if (err.status === 401) {
      setSession(null);
    } else {
      throw err;
    }
  }
  return session;
}

export async function login(user, password, code) {
  const doc = await request("POST", "/v1/webapi/sessions/web", {
    user,
    password,
    second_factor_token: code,
  });
  setSession(doc);
  return doc;
}

export async function logout() {
  try {
    await request("DELETE", "/v1/webapi/sessions/web");
  } finally {
    setSession(null);
  }
}

// --- invites ----------------------------------------------------------------------

/** The enrolment data of an invite: {user, secret, uri, qr_svg}. */
export async function getInvite(token) {
  const doc = await request("GET", "/v1/webapi/users/password/token/" + encodeURIComponent(token));
  const totp = doc.totp || {};
  return {
    user: doc.user,
    secret: totp.secret || doc.totp_secret || "",
    uri: totp.uri || doc.totp_uri || "",
    qr_svg: doc.qr_svg || "",
  };
}

/** Finish an invite; the proxy starts a web session with it (we land logged in). */
export async function completeInvite(token, password, code) {
  const doc = await request("PUT", "/v1/webapi/users/password/token", {
    token,
    password,
    second_factor_token: code,
  });
  if (doc && doc.csrf_token) {
    setSession(doc);
  } else {
    await resume();
  }
  return session;
}

// --- the rest ---------------------------------------------------------------------

export function listNodes(search, labels) {
  return request("GET", "/v1/webapi/nodes" + query({ search, labels }));
}

export function listActiveSessions() {
  return request("GET", "/v1/webapi/sessions/active");
}

export function listRecordings() {
  return request("GET", "/v1/webapi/recordings");
}

export function getRecording(sid) {
  return request("GET", "/v1/webapi/recordings/" + encodeURIComponent(sid));
}

export function listEvents(filters) {
  return request("GET", "/v1/webapi/events" + query(filters));
}

/** The terminal websocket's URL (the bearer token travels as a subprotocol). */
export function terminalURL(params) {
  return `wss://${location.host}/v1/webapi/terminal` + query(params);
}

export const TERMINAL_PROTOCOL = "trioport.terminal.v1";
