"use strict";
document.getElementById("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const err = document.getElementById("login-error");
  err.textContent = "";
  const body = JSON.stringify({name: document.getElementById("name").value,
                               password: document.getElementById("password").value});
  try {
    const r = await fetch("/api/login", {method: "POST", headers: {"Content-Type": "application/json"}, body,
                                         credentials: "same-origin"});
    if (r.ok) { window.location.assign("/"); return; }
    err.textContent = (await r.json()).error || "login refused";
  } catch (e) {
    err.textContent = "console not reachable: " + e;
  }
});
