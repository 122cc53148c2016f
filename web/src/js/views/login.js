// Log in with user name, password and the authenticator app's code.

import * as api from "../api.js";
import { field, h, message, replace } from "../dom.js";

/** The message a person sees for a failed login. */
export function loginErrorText(err) {
  if (!(err instanceof api.ApiError)) return String(err.message || err);
  if (err.status === 401 || err.status === 403) {
    return (
      "Wrong user name, password or code, or an account locked after too many failed " +
      "attempts. Check them and try again with the next code."
    );
  }
  if (err.status === 423) {
    return `This account is locked after too many failed attempts: ${err.message}`;
  }
  if (err.status === 429) {
    return `Too many attempts from here: ${err.message}`;
  }
  return err.message;
}

export function render(container, ctx) {
  const user = h("input", { name: "user", autocomplete: "username", required: true });
  const password = h("input", {
    name: "password",
    type: "password",
    autocomplete: "current-password",
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
  const submit = h("button", { type: "submit" }, "Log in");
  const form = h(
    "form",
    { class: "card narrow", id: "login-form" },
    h("h1", {}, "Log in"),
    field("User name", user),
    field("Password", password),
    field("Authenticator code", code, "The six digits your authenticator app shows now."),
    status,
    submit,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    replace(status);
    try {
      const doc = await api.login(user.value.trim(), password.value, code.value.trim());
      ctx.loggedIn(doc);
    } catch (err) {
      replace(status, message("error", loginErrorText(err)));
      password.value = "";
      code.value = "";
      password.focus();
    } finally {
      submit.disabled = false;
    }
  });
  container.append(form);
  user.focus();
}
