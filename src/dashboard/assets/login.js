// The login page: sends the one-time code after `#` in the link (never sent to a server by the
// browser, so it is in no log or Referer) to POST /login, which sets the session cookie, then
// opens the dashboard. The code is wiped from the address bar and history first.
"use strict";
(function () {
  const message = document.getElementById("message");
  const code = decodeURIComponent(location.hash.replace(/^#/, ""));
  if (location.pathname !== "/login") return; // the "not logged in" page shows its text only
  history.replaceState(null, "", "/login");
  if (!code) {
    message.textContent = "This link has no login code. Run `dirigent open` in the workspace for one.";
    return;
  }
  fetch("/login", { method: "POST", body: code, credentials: "same-origin", headers: { "Content-Type": "text/plain" } })
    .then(async (r) => {
      if (r.ok) {
        location.replace("/");
        return;
      }
      let why = "the daemon refused the login";
      try { why = (await r.json()).error.message; } catch (_) { /* not JSON */ }
      message.textContent = "error: " + why;
    })
    .catch((e) => { message.textContent = "error: the daemon cannot be reached (" + e + ")"; });
})();
