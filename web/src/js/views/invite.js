// Finish an invite (or a reset): choose a password, enrol an authenticator app
// from the QR code (or the secret as text), confirm a code, land logged in.

import * as api from "../api.js";
import { field, h, message, replace } from "../dom.js";

const MIN_PASSWORD = 12;
const MAX_PASSWORD = 128;

function inviteErrorText(err) {
  if (err instanceof api.ApiError && (err.status === 404 || err.status === 410)) {
    return (
      "This invite link has expired or has already been used. " +
      "Ask your administrator for a new one."
    );
  }
  if (err instanceof api.ApiError && err.status === 429) {
    return `Too many attempts from here: ${err.message}`;
  }
  return err.message || String(err);
}

/** The QR code as an image: the SVG the proxy drew, never inserted as markup. */
function qrImage(svg) {
  if (!svg) return null;
  return h("img", {
    class: "qr",
    id: "invite-qr",
    alt: "QR code to scan with your authenticator app",
    src: "data:image/svg+xml;charset=utf-8," + encodeURIComponent(svg),
  });
}

export function render(container, ctx) {
  const [kind, token] = ctx.params;
  const box = h("div", { class: "card narrow" }, h("p", {}, "Loading the invite…"));
  container.append(box);
  let alive = true;

  api.getInvite(token).then(
    (invite) => {
      if (alive) showForm(box, kind, token, invite, ctx);
    },
    (err) => {
      if (!alive) return;
      replace(
        box,
        h("h1", {}, kind === "reset" ? "Reset" : "Invite"),
        message("error", inviteErrorText(err)),
        h("p", {}, h("a", { href: "/web/login" }, "Go to the login page")),
      );
    },
  );
  return () => {
    alive = false;
  };
}

function showForm(box, kind, token, invite, ctx) {
  const password = h("input", {
    name: "password",
    type: "password",
    autocomplete: "new-password",
    minlength: MIN_PASSWORD,
    maxlength: MAX_PASSWORD,
    required: true,
  });
  const again = h("input", {
    name: "password_again",
    type: "password",
    autocomplete: "new-password",
    required: true,
  });
  const code = h("input", {
    name: "code",
    inputmode: "numeric",
    autocomplete: "one-time-code",
    pattern: "[0-9]{6,8}",
    required: true,
  });
  const status = h("div", { class: "form-status", "aria-live": "polite" });
  const submit = h("button", { type: "submit" }, "Finish and log in");
  const secret = h("code", { class: "secret", id: "invite-secret" }, invite.secret);
  const form = h(
    "form",
    { id: "invite-form" },
    h("h1", {}, kind === "reset" ? `Reset ${invite.user}` : `Welcome, ${invite.user}`),
    h("h2", {}, "1. Choose a password"),
    // For password managers: the account the new password belongs to.
    h("input", { type: "text", name: "username", autocomplete: "username", value: invite.user, hidden: true, readonly: true }),
    field("Password", password, `At least ${MIN_PASSWORD} characters.`),
    field("Password again", again),
    h("h2", {}, "2. Add trioport to your authenticator app"),
    h(
      "div",
      { class: "enrol" },
      qrImage(invite.qr_svg),
      h(
        "div",
        {},
        h("p", {}, "Scan the QR code, or type this secret into the app:"),
        secret,
        invite.uri ? h("p", { class: "muted small" }, h("a", { href: invite.uri }, "Open in an app on this device")) : null,
      ),
    ),
    h("h2", {}, "3. Confirm with a code"),
    field("Authenticator code", code, "The six digits the app shows now."),
    status,
    submit,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    replace(status);
    if (password.value.length < MIN_PASSWORD) {
      replace(status, message("error", `The password must be at least ${MIN_PASSWORD} characters.`));
      return;
    }
    if (password.value.length > MAX_PASSWORD) {
      replace(status, message("error", `The password must be at most ${MAX_PASSWORD} characters.`));
      return;
    }
    if (password.value !== again.value) {
      replace(status, message("error", "The two passwords do not match."));
      return;
    }
    submit.disabled = true;
    try {
      const doc = await api.completeInvite(token, password.value, code.value.trim());
      if (doc) {
        ctx.loggedIn(doc);
      } else {
        ctx.flash("ok", "Your account is ready. Log in with your new password.");
        ctx.navigate("/web/login", { replaceState: true, keepFlash: true });
      }
    } catch (err) {
      let text = inviteErrorText(err);
      if (err instanceof api.ApiError && (err.status === 401 || err.status === 403)) {
        text = "That code is not right: check the time on your device and try the next code.";
      }
      replace(status, message("error", text));
      code.value = "";
    } finally {
      submit.disabled = false;
    }
  });
  replace(box, form);
  password.focus();
}
