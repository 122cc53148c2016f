// Who is connected where, with the parties of each session; join one in one click.

import * as api from "../api.js";
import { formatTime, h, message, replace } from "../dom.js";

const REFRESH_MS = 5000;

export function render(container, ctx) {
  const status = h("div", { class: "form-status" });
  const tbody = h("tbody");
  container.append(
    h("h1", {}, "Active sessions"),
    status,
    h(
      "table",
      { class: "list", id: "sessions-table" },
      h(
        "thead",
        {},
        h("tr", {}, h("th", {}, "User"), h("th", {}, "Where"), h("th", {}, "Started"), h("th", {}, "Parties"), h("th", {}, "")),
      ),
      tbody,
    ),
  );

  function row(s) {
    const parties = (s.parties || []).map((p) =>
      h("li", {}, p.user, p.mode ? ` (${p.mode})` : "", p.remote_addr ? h("span", { class: "muted" }, ` from ${p.remote_addr}`) : ""),
    );
    const join = h(
      "button",
      {
        type: "button",
        class: "primary",
        onclick: () => {
          const q = new URLSearchParams({ sid: s.sid, node: s.node || s.node_name, login: s.login, name: s.node_name || s.node });
          ctx.navigate("/web/terminal?" + q.toString());
        },
      },
      "Join",
    );
    return h(
      "tr",
      { dataset: { sid: s.sid } },
      h("td", {}, s.user),
      h("td", {}, `${s.login}@${s.node_name || s.node}`, s.kind && !["ssh", "interactive"].includes(s.kind) ? h("span", { class: "muted" }, ` (${s.kind})`) : ""),
      h("td", {}, formatTime(s.created)),
      h("td", {}, h("ul", { class: "parties" }, parties)),
      h("td", { class: "actions" }, join),
    );
  }

  let timer = null;
  let alive = true;
  async function load() {
    try {
      const doc = await api.listActiveSessions();
      if (!alive) return;
      const list = doc.sessions || [];
      replace(tbody, ...list.map(row));
      replace(status, list.length ? null : message("info", "Nobody is connected right now."));
    } catch (err) {
      if (alive) ctx.handleError(err, status);
      return;
    }
    if (alive) timer = setTimeout(load, REFRESH_MS);
  }
  load();
  return () => {
    alive = false;
    clearTimeout(timer);
  };
}
