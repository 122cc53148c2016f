// A terminal in the page: xterm.js over the proxy's terminal websocket
// (docs/web.md, "The terminal websocket"). A new session on ?node=&login=, or a
// party joining an existing one on ?sid=. The pty follows the size of the page;
// leaving the page or closing the tab ends the session (a joining party only
// leaves it).

import * as api from "../api.js";
import { h, message, replace } from "../dom.js";

function send(ws, msg) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg));
}

export function render(container, ctx) {
  const session = api.currentSession();
  const q = ctx.query;
  const node = q.get("node") || "";
  const login = q.get("login") || "";
  const joining = q.get("sid") || "";
  const name = q.get("name") || node;

  if (!node || !login) {
    container.append(message("error", "Pick a node and a login on the Nodes page first."));
    return null;
  }
  if (typeof window.Terminal !== "function" || !window.FitAddon) {
    container.append(message("error", "The terminal (xterm.js) did not load: reload the page."));
    return null;
  }

  const title = h("span", { class: "term-title" }, `${login}@${name}`);
  const state = h("span", { class: "term-state", id: "term-state" }, "connecting…");
  const size = h("span", { class: "term-size mono", id: "term-size" });
  const sidLabel = h("span", { class: "term-sid mono", id: "term-sid" });
  const endButton = h("button", { type: "button", id: "term-end" }, joining ? "Leave" : "End session");
  const banner = h("div", { class: "term-banner", id: "term-banner" });
  const box = h("div", { class: "terminal", id: "terminal" });
  container.append(
    h(
      "section",
      { class: "term-page" },
      h("div", { class: "term-bar" }, title, state, sidLabel, size, endButton),
      banner,
      box,
    ),
  );
  document.title = `${login}@${name} · trioport`;

  const term = new window.Terminal({
    cursorBlink: true,
    fontFamily: '"DejaVu Sans Mono", "Liberation Mono", Menlo, Consolas, monospace',
    fontSize: 14,
    scrollback: 5000,
  });
  const fit = new window.FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(box);
  try {
    fit.fit();
  } catch (err) {
    console.warn("fit", err);
  }
  const showSize = () => {
    size.textContent = `${term.cols}×${term.rows}`;
    box.dataset.cols = String(term.cols);
    box.dataset.rows = String(term.rows);
  };
  showSize();

  const params = { node, login, cols: term.cols, rows: term.rows };
  if (joining) params.sid = joining;
  const protocols = [api.TERMINAL_PROTOCOL];
  if (session && session.csrf_token) protocols.push("bearer." + session.csrf_token);
  const ws = new WebSocket(api.terminalURL(params), protocols);
  let opened = false;
  let ended = false;

  const setState = (text, kind) => {
    state.textContent = text;
    state.dataset.state = kind;
  };

  ws.addEventListener("open", () => {
    opened = true;
    setState(joining ? "joined" : "connected", "open");
    term.focus();
  });
  ws.addEventListener("message", (event) => {
    let msg;
    try {
      msg = JSON.parse(event.data);
    } catch {
      return;
    }
    if (msg.type === "output") {
      term.write(msg.data);
    } else if (msg.type === "session") {
      sidLabel.textContent = msg.sid;
      box.dataset.sid = msg.sid;
      if (!joining) {
        replace(banner, message("info", "Others whose roles allow it can join this session from Active sessions."));
      }
    } else if (msg.type === "close") {
      ended = true;
      const status = msg.exit_status === undefined || msg.exit_status === null ? "" : ` (exit status ${msg.exit_status})`;
      setState("ended", "ended");
      replace(banner, message("info", `The session ended${status}${msg.reason ? ": " + msg.reason : ""}.`));
    }
  });
  ws.addEventListener("close", async (event) => {
    endButton.disabled = true;
    term.options.disableStdin = true;
    if (ended) return;
    ended = true;
    setState("closed", "ended");
    if (!opened) {
      // Refused before it opened: say why if it is the web session that is gone.
      try {
        if (!(await api.resume())) {
          ctx.handleError(new api.ApiError(401, "expired", "session expired"));
          return;
        }
      } catch {
        // fall through to the generic message
      }
      replace(banner, message("error", "The proxy refused the terminal: the node or login may not be allowed."));
      return;
    }
    const why = event.reason ? `: ${event.reason}` : "";
    replace(banner, message(event.code === 1000 ? "info" : "error", `The connection closed (code ${event.code})${why}.`));
  });

  term.onData((data) => send(ws, { type: "input", data }));
  term.onResize(({ cols, rows }) => {
    showSize();
    send(ws, { type: "resize", cols, rows });
  });
  const observer = new ResizeObserver(() => {
    try {
      fit.fit();
    } catch (err) {
      console.warn("fit", err);
    }
  });
  observer.observe(box);

  function finish() {
    if (ws.readyState === WebSocket.OPEN && !ended && !joining) send(ws, { type: "close" });
    if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) ws.close(1000, "left the page");
  }
  endButton.addEventListener("click", finish);
  // Closing the tab (or the window) ends the session too.
  window.addEventListener("pagehide", finish);

  return () => {
    finish();
    window.removeEventListener("pagehide", finish);
    observer.disconnect();
    term.dispose();
  };
}
