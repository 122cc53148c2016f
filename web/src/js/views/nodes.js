// The nodes she may reach, filterable by text and by label; pick a login, connect.

import * as api from "../api.js";
import { field, h, message, replace } from "../dom.js";

/** "k=v, k2=v2" as the proxy's labels parameter ("k=v,k2=v2"); bad parts are dropped. */
export function normaliseLabels(text) {
  return text
    .split(",")
    .map((part) => part.trim())
    .filter((part) => /^[^=\s]+=[^=]*$/.test(part))
    .map((part) => part.replace(/\s*=\s*/, "="))
    .join(",");
}

export function render(container, ctx) {
  const session = api.currentSession();
  const search = h("input", {
    type: "search",
    name: "search",
    placeholder: "name, address or label",
    value: ctx.query.get("search") || "",
  });
  const labels = h("input", {
    name: "labels",
    placeholder: "env=prod,team=db",
    value: ctx.query.get("labels") || "",
  });
  const loginSelect = h("select", { name: "login" });
  const status = h("div", { class: "form-status" });
  const tbody = h("tbody");
  const table = h(
    "table",
    { class: "list", id: "nodes-table" },
    h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "Address"), h("th", {}, "Labels"), h("th", {}, ""))),
    tbody,
  );
  container.append(
    h("h1", {}, "Nodes"),
    h(
      "form",
      { class: "filters", id: "nodes-filter" },
      field("Search", search),
      field("Labels", labels),
      field("Log in as", loginSelect),
    ),
    status,
    table,
  );

  function setLogins(logins) {
    const previous = loginSelect.value || sessionStorage.getItem("trioport.login") || "";
    replace(loginSelect, ...logins.map((l) => h("option", { value: l }, l)));
    if (logins.includes(previous)) loginSelect.value = previous;
  }
  setLogins((session && session.logins) || []);
  loginSelect.addEventListener("change", () => sessionStorage.setItem("trioport.login", loginSelect.value));

  function addLabel(key, value) {
    const parts = normaliseLabels(labels.value).split(",").filter(Boolean);
    const pair = `${key}=${value}`;
    if (!parts.includes(pair)) parts.push(pair);
    labels.value = parts.join(",");
    load();
  }

  function row(node) {
    const chips = Object.entries(node.labels || {})
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([k, v]) =>
        h(
          "button",
          { type: "button", class: "chip", title: "Show only nodes with this label", onclick: () => addLabel(k, v) },
          `${k}=${v}`,
        ),
      );
    const connect = h(
      "button",
      {
        type: "button",
        class: "primary",
        dataset: { node: node.name },
        onclick: () => {
          const login = loginSelect.value;
          if (!login) {
            replace(status, message("error", "Pick a login to connect as."));
            return;
          }
          const q = new URLSearchParams({ node: node.id || node.name, login, name: node.name });
          ctx.navigate("/web/terminal?" + q.toString());
        },
      },
      "Connect",
    );
    return h(
      "tr",
      { dataset: { node: node.name } },
      h("td", {}, node.name),
      h("td", { class: "mono" }, node.addr || ""),
      h("td", {}, chips),
      h("td", { class: "actions" }, connect),
    );
  }

  let generation = 0;
  async function load() {
    const mine = ++generation;
    const labelParam = normaliseLabels(labels.value);
    const params = new URLSearchParams();
    if (search.value.trim()) params.set("search", search.value.trim());
    if (labelParam) params.set("labels", labelParam);
    const qs = params.toString();
    history.replaceState(null, "", "/web/nodes" + (qs ? "?" + qs : ""));
    try {
      const doc = await api.listNodes(search.value.trim(), labelParam);
      if (mine !== generation) return;
      if (doc.logins) setLogins(doc.logins);
      const nodes = doc.nodes || [];
      replace(tbody, ...nodes.map(row));
      if (!nodes.length) {
        replace(status, message("info", search.value || labelParam ? "No node matches." : "No node you may reach is online."));
      } else if (!loginSelect.options.length) {
        replace(status, message("error", "Your roles allow no login on any node: ask your administrator."));
      } else {
        replace(status);
      }
    } catch (err) {
      if (mine === generation) ctx.handleError(err, status);
    }
  }

  let timer = null;
  const later = () => {
    clearTimeout(timer);
    timer = setTimeout(load, 250);
  };
  search.addEventListener("input", later);
  labels.addEventListener("input", later);
  container.querySelector("#nodes-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });
  load();
  return () => {
    clearTimeout(timer);
    generation += 1;
  };
}
