// The audit log: recent events, filterable by type, user and time range.

import * as api from "../api.js";
import { field, formatTime, h, message, replace } from "../dom.js";

const COMMON_TYPES = [
  "session.start",
  "session.end",
  "session.join",
  "session.leave",
  "session.rejected",
  "session.upload",
  "session.recording.access",
  "resize",
  "exec",
  "scp",
  "sftp",
  "port",
  "subsystem",
  "client.disconnect",
  "user.login",
  "user.create",
  "user.update",
  "user.delete",
  "user.password_change",
  "reset_password_token.create",
  "join_token.create",
  "role.created",
  "role.updated",
  "role.deleted",
  "instance.join",
  "cert.create",
  "auth",
];

const SHOWN_ELSEWHERE = new Set(["event", "code", "time", "uid", "user"]);

/** A datetime-local value as an ISO time, or "" for none. */
function iso(value) {
  if (!value) return "";
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? "" : date.toISOString();
}

function details(event) {
  return Object.entries(event)
    .filter(([key]) => !SHOWN_ELSEWHERE.has(key))
    .map(([key, value]) => `${key}=${typeof value === "object" ? JSON.stringify(value) : value}`)
    .join("  ");
}

export function render(container, ctx) {
  const type = h("input", { name: "type", list: "audit-types", placeholder: "any", value: ctx.query.get("type") || "" });
  const user = h("input", { name: "user", placeholder: "anyone", value: ctx.query.get("user") || "" });
  const from = h("input", { name: "from", type: "datetime-local" });
  const to = h("input", { name: "to", type: "datetime-local" });
  const limit = h("select", { name: "limit" }, [100, 500, 1000].map((n) => h("option", { value: n }, String(n))));
  const status = h("div", { class: "form-status" });
  const tbody = h("tbody");
  const form = h(
    "form",
    { class: "filters", id: "audit-filter" },
    field("Type", type),
    h("datalist", { id: "audit-types" }, COMMON_TYPES.map((t) => h("option", { value: t }))),
    field("User", user),
    field("From", from),
    field("To", to),
    field("At most", limit),
    h("button", { type: "submit" }, "Show"),
  );
  container.append(
    h("h1", {}, "Audit log"),
    form,
    status,
    h(
      "table",
      { class: "list", id: "audit-table" },
      h("thead", {}, h("tr", {}, h("th", {}, "Time"), h("th", {}, "Event"), h("th", {}, "User"), h("th", {}, "Details"))),
      tbody,
    ),
  );

  let generation = 0;
  async function load() {
    const mine = ++generation;
    const filters = {
      type: type.value.trim(),
      user: user.value.trim(),
      from: iso(from.value),
      to: iso(to.value),
      limit: limit.value,
    };
    if (filters.from && filters.to && filters.from > filters.to) {
      replace(status, message("error", "The start of the time range is after its end."));
      return;
    }
    try {
      const doc = await api.listEvents(filters);
      if (mine !== generation) return;
      // Newest first, whichever order they came in.
      const when = (e) => Date.parse(e.time) || 0;
      const events = (doc.events || []).slice().sort((a, b) => when(b) - when(a));
      replace(
        tbody,
        ...events.map((e) =>
          h(
            "tr",
            { dataset: { event: e.event || "" } },
            h("td", { class: "nowrap" }, formatTime(e.time)),
            h("td", {}, e.event || "", e.code ? h("span", { class: "muted" }, ` ${e.code}`) : ""),
            h("td", {}, e.user || ""),
            h("td", { class: "mono small" }, details(e)),
          ),
        ),
      );
      replace(status, events.length ? null : message("info", "No event matches."));
    } catch (err) {
      if (mine === generation) ctx.handleError(err, status);
    }
  }
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });
  load();
  return () => {
    generation += 1;
  };
}
