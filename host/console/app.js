// The console's entry: signs in (a pasted token, or a link carrying it in the URL fragment),
// asks the host who that is, and shows the guardian's, vendor's or platform's view.

import { ApiError, get, setToken, token } from "/console/api.js";
import { announce } from "/console/ui.js";
import { guardianView } from "/console/guardian.js";
import { vendorView } from "/console/vendor.js";
import { platformView } from "/console/platform.js";

const $ = (id) => document.getElementById(id);
let stop = () => {};

function takeTokenFromLink() {
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (match) {
    setToken(decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
}

function showSignIn(message) {
  stop();
  $("view").replaceChildren();
  $("who").textContent = "";
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = message || "";
  $("token").focus();
}

async function start() {
  stop();
  let me;
  try {
    me = await get("/v1/whoami");
  } catch (e) {
    setToken("");
    showSignIn(e instanceof ApiError && e.status === 401 ? "That token is not valid (or the session has expired)." : e.message);
    return;
  }
  $("sign-in").hidden = true;
  $("sign-out").hidden = false;
  const view = $("view");
  const onExpired = () => { setToken(""); showSignIn("Your session has expired: sign in again. Pending requests stay queued."); };
  if (me.kind === "guardian") {
    $("who").textContent = `Guardian ${me.guardian}`;
    stop = guardianView(view, me, onExpired);
  } else if (me.kind === "vendor") {
    $("who").textContent = `Vendor ${me.vendor}`;
    stop = vendorView(view, me);
  } else if (me.kind === "admin") {
    $("who").textContent = "Platform team";
    stop = platformView(view, me);
  } else {
    showSignIn("Agent tokens are for devices, not for the console.");
    return;
  }
  announce(`Signed in as ${$("who").textContent}`);
  $("main").focus();
}

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setToken($("token").value.trim());
    $("token").value = "";
    start();
  });
  $("sign-out").addEventListener("click", () => {
    setToken("");
    showSignIn("Signed out.");
  });
  takeTokenFromLink();
  if (token()) start();
  else showSignIn();
});
