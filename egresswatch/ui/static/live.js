// egresswatch ui: live update. Polls /api/head (newest event and alert ids) every
// 2 s; when either changed, fetches this page again and swaps <main> for the new
// one, which the server rendered and escaped. No inline script anywhere: the
// Content-Security-Policy allows scripts from this origin only.
"use strict";
(function () {
  const INTERVAL = 2000;
  let events = document.body.dataset.headEvents;
  let alerts = document.body.dataset.headAlerts;
  const box = document.getElementById("live");
  const state = document.getElementById("live-state");
  let busy = false;

  function say(text) { if (state) state.textContent = text; }

  async function refresh() {
    const res = await fetch(window.location.href, { headers: { "Accept": "text/html" } });
    if (!res.ok) { say("reload failed: HTTP " + res.status); return; }
    const doc = new DOMParser().parseFromString(await res.text(), "text/html");
    const fresh = doc.getElementById("content");
    const main = document.getElementById("content");
    if (fresh && main) main.replaceChildren(...Array.from(fresh.childNodes).map((n) => document.importNode(n, true)));
    const foot = doc.querySelector("footer");
    const here = document.querySelector("footer");
    if (foot && here) here.textContent = foot.textContent;
    say("updated " + new Date().toLocaleTimeString());
  }

  async function poll() {
    if (busy || (box && !box.checked) || document.hidden) return;
    busy = true;
    try {
      const res = await fetch("/api/head", { cache: "no-store" });
      if (res.ok) {
        const head = await res.json();
        if (String(head.events) !== events || String(head.alerts) !== alerts) {
          events = String(head.events);
          alerts = String(head.alerts);
          await refresh();
        }
      } else {
        say("offline (HTTP " + res.status + ")");
      }
    } catch (e) {
      say("offline");
    } finally {
      busy = false;
    }
  }

  window.setInterval(poll, INTERVAL);
})();
