// The login page: sends the one-time code after `#` in the link (never sent to a server by the
// browser, so it is in no log or Referer) to POST /login, which sets the session cookie and
// answers the session's CSRF value; the page keeps that in this origin's storage (bound to the
// port, unlike the cookie) for the dashboard to send with every request. The code is wiped from
// the address bar and history first.
"use strict";
(function () {
  const message = document.getElementById("message");
  const code = decodeURIComponent(location.hash.replace(/^#/, ""));
  history.replaceState(null, "", "/login");
  const stillLoggedIn = async () => {
    const csrf = localStorage.getItem("dirigent-csrf");
    if (!csrf) return false;
    const r = await fetch("/tasks?limit=1", { credentials: "same-origin", headers: { "X-Dirigent-CSRF": csrf } });
    return r.ok;
  };
  if (!code) {
    message.textContent = "This link has no login code. Run `dirigent open` in the workspace for one.";
    return;
  }
  fetch("/login", { method: "POST", body: code, credentials: "same-origin", headers: { "Content-Type": "text/plain" } })
    .then(async (r) => {
      if (r.ok) {
        const answer = await r.json();
        localStorage.setItem("dirigent-csrf", answer.csrf);
        location.replace("/");
        return;
      }
      // A link used twice (a reload, a second click) while this browser is logged in anyway.
      if (await stillLoggedIn()) {
        location.replace("/");
        return;
      }
      let why = "the daemon refused the login";
      try { why = (await r.json()).error.message; } catch (_) { /* not JSON */ }
      message.textContent = "error: " + why;
    })
    .catch((e) => { message.textContent = "error: the daemon cannot be reached (" + e + ")"; });
})();
