// Finished sessions that were recorded; each one plays in the page.

import * as api from "../api.js";
import { formatDuration, formatSize, formatTime, h, message, replace } from "../dom.js";

export function render(container, ctx) {
  const status = h("div", { class: "form-status" }, message("info", "Loading…"));
  const tbody = h("tbody");
  container.append(
    h("h1", {}, "Recordings"),
    status,
    h(
      "table",
      { class: "list", id: "recordings-table" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          h("th", {}, "User"),
          h("th", {}, "Node"),
          h("th", {}, "Login"),
          h("th", {}, "Started"),
          h("th", {}, "Duration"),
          h("th", {}, "Size"),
          h("th", {}, ""),
        ),
      ),
      tbody,
    ),
  );
  let alive = true;
  api.listRecordings().then(
    (doc) => {
      if (!alive) return;
      const list = doc.recordings || []; // newest first, as the proxy sends them
      replace(
        tbody,
        ...list.map((r) =>
          h(
            "tr",
            { dataset: { sid: r.sid } },
            h("td", {}, r.user || ""),
            h("td", {}, r.node_name || ""),
            h("td", {}, r.login || ""),
            h("td", {}, formatTime(r.start)),
            h("td", {}, r.duration_ms === null || r.duration_ms === undefined ? "" : formatDuration(r.duration_ms)),
            h("td", {}, formatSize(r.size)),
            h("td", { class: "actions" }, h("a", { class: "button primary", href: `/web/recordings/${encodeURIComponent(r.sid)}` }, "Play")),
          ),
        ),
      );
      replace(status, list.length ? null : message("info", "No recordings yet."));
    },
    (err) => {
      if (alive) ctx.handleError(err, status);
    },
  );
  return () => {
    alive = false;
  };
}
