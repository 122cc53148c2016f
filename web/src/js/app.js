// The single page app: routes under /web/ (the proxy answers every /web/ path
// that is not a file with index.html), the top bar, and what happens when the
// session ends under us.

import * as api from "./api.js";
import { message, replace } from "./dom.js";
import * as audit from "./views/audit.js";
import * as invite from "./views/invite.js";
import * as login from "./views/login.js";
import * as nodes from "./views/nodes.js";
import * as player from "./views/player.js";
import * as recordings from "./views/recordings.js";
import * as sessions from "./views/sessions.js";
import * as terminal from "./views/terminal.js";

const HAD_SESSION = "trioport.had_session";

// [pattern, view, needs a session, nav item]
const routes = [
  [/^\/web\/login$/, login, false, null],
  [/^\/web\/(invite|reset)\/([^/]+)$/, invite, false, null],
  [/^\/web\/nodes$/, nodes, true, "nodes"],
  [/^\/web\/terminal$/, terminal, true, "nodes"],
  [/^\/web\/sessions$/, sessions, true, "sessions"],
  [/^\/web\/recordings$/, recordings, true, "recordings"],
  [/^\/web\/recordings\/([^/]+)$/, player, true, "recordings"],
  [/^\/web\/audit$/, audit, true, "audit"],
];

const view = document.getElementById("view");
const flashBox = document.getElementById("flash");
let cleanup = null;
let nextPath = null; // where to go after logging in

/** Show a message above the page until the next navigation (or for good, if sticky). */
function flash(kind, text) {
  if (!text) {
    flashBox.hidden = true;
    flashBox.replaceChildren();
    return;
  }
  replace(flashBox, message(kind, text));
  flashBox.hidden = false;
}

export function navigate(path, { replaceState = false, keepFlash = false } = {}) {
  if (replaceState) {
    history.replaceState(null, "", path);
  } else {
    history.pushState(null, "", path);
  }
  route({ keepFlash });
}

/** The session is gone on the server (401): back to the login page, saying why. */
function sessionExpired() {
  api.dropSession();
  sessionStorage.removeItem(HAD_SESSION);
  nextPath = location.pathname + location.search;
  flash("error", "Your session has expired. Log in again to go on.");
  navigate("/web/login", { replaceState: true, keepFlash: true });
}

/** What views call with an error: a 401 ends the session, anything else is shown in box. */
function handleError(err, box) {
  if (err instanceof api.ApiError && err.status === 401) {
    sessionExpired();
    return;
  }
  const text = err && err.message ? err.message : String(err);
  if (box) {
    replace(box, message("error", text));
  } else {
    flash("error", text);
  }
}

function loggedIn(doc, { landing = "/web/nodes" } = {}) {
  sessionStorage.setItem(HAD_SESSION, "1");
  const target = nextPath && nextPath.startsWith("/web/") ? nextPath : landing;
  nextPath = null;
  flash(null);
  navigate(target, { replaceState: true });
}

function renderTopbar(doc, active) {
  document.getElementById("nav").hidden = !doc;
  document.getElementById("whoami").hidden = !doc;
  document.getElementById("whoami-user").textContent = doc ? doc.user : "";
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("active", link.dataset.nav === active);
  }
}

function route({ keepFlash = false } = {}) {
  if (cleanup) {
    try {
      cleanup();
    } catch (err) {
      console.error(err);
    }
    cleanup = null;
  }
  if (!keepFlash) flash(null);
  const path = location.pathname.replace(/\/+$/, "") || "/web";
  const session = api.currentSession();
  if (path === "/web" || path === "") {
    navigate(session ? "/web/nodes" : "/web/login", { replaceState: true, keepFlash: true });
    return;
  }
  for (const [pattern, module, needsSession, nav] of routes) {
    const match = pattern.exec(path);
    if (!match) continue;
    if (needsSession && !session) {
      nextPath = location.pathname + location.search;
      navigate("/web/login", { replaceState: true, keepFlash: true });
      return;
    }
    if (module === login && session) {
      navigate("/web/nodes", { replaceState: true });
      return;
    }
    renderTopbar(session, nav);
    view.replaceChildren();
    document.title = "trioport";
    const ctx = {
      params: match.slice(1).map(decodeURIComponent),
      query: new URLSearchParams(location.search),
      navigate,
      flash,
      handleError,
      loggedIn,
    };
    cleanup = module.render(view, ctx) || null;
    return;
  }
  renderTopbar(session, null);
  replace(view, message("error", "There is no such page."));
}

// Links inside the app navigate without reloading the page.
document.addEventListener("click", (event) => {
  const link = event.target.closest("a[href]");
  if (!link || link.target || event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const url = new URL(link.href, location.href);
  if (url.origin !== location.origin || !url.pathname.startsWith("/web/")) return;
  if (/\.[a-z0-9]+$/i.test(url.pathname)) return; // a file, not a page
  event.preventDefault();
  navigate(url.pathname + url.search);
});

window.addEventListener("popstate", () => route());

document.getElementById("logout").addEventListener("click", async () => {
  try {
    await api.logout();
  } catch (err) {
    if (!(err instanceof api.ApiError && err.status === 401)) {
      flash("error", "Logging out failed: " + err.message);
      return;
    }
  }
  sessionStorage.removeItem(HAD_SESSION);
  flash("ok", "You are logged out.");
  navigate("/web/login", { keepFlash: true });
});

api.onSessionChange((doc) => renderTopbar(doc, null));

async function start() {
  try {
    await api.resume();
  } catch (err) {
    flash("error", err.message);
  }
  if (!api.currentSession() && sessionStorage.getItem(HAD_SESSION)) {
    sessionStorage.removeItem(HAD_SESSION);
    flash("error", "Your session has expired. Log in again to go on.");
    route({ keepFlash: true });
    return;
  }
  route();
}

start();
