// Live pages: listens to the server's change notes (GET /live, Server-Sent
// Events) and refreshes the parts of the page marked data-live="fleet",
// "device" or "rollout" by fetching this same page again and swapping those
// elements (matched by id) for their new versions. Readings of the device
// shown go to the charts as a "drover:readings" event. The markup comes
// from the server, which escapes everything it renders; DOMParser runs no
// scripts.
"use strict";
(() => {
  const url = document.body.dataset.live;
  if (!url || typeof EventSource === "undefined") return;
  const parts = (kind) => document.querySelectorAll(`[data-live~="${kind}"][id]`);
  const wanted = ["fleet", "device", "rollout"].filter((k) => parts(k).length > 0);
  const charts = document.getElementById("charts");
  const firing = document.getElementById("nav-firing");
  if (wanted.length === 0 && !charts && !firing) return;

  const badge = document.getElementById("live-status");
  const show = (state, text) => {
    if (!badge) return;
    badge.hidden = false;
    badge.dataset.state = state;
    badge.textContent = text;
  };

  // One fetch at a time; notes that arrive meanwhile fold into one more.
  let busy = false;
  const pending = new Set();
  async function refresh(kinds) {
    kinds.forEach((k) => pending.add(k));
    if (busy) return;
    busy = true;
    try {
      while (pending.size > 0) {
        const now = [...pending];
        pending.clear();
        const res = await fetch(location.href, {
          credentials: "same-origin",
          redirect: "manual",
          headers: { Accept: "text/html", "X-Drover-Live": "1" },
        });
        if (res.type === "opaqueredirect" || res.status === 401) {
          show("off", "Signed out: reload to sign in");
          source.close();
          return;
        }
        if (!res.ok) continue;
        const fresh = new DOMParser().parseFromString(await res.text(), "text/html");
        for (const kind of now) {
          for (const old of parts(kind)) {
            const next = fresh.getElementById(old.id);
            if (!next) continue;
            const focused = document.activeElement && old.contains(document.activeElement)
              ? document.activeElement.id : "";
            const node = document.importNode(next, true);
            old.replaceWith(node);
            if (window.htmx) window.htmx.process(node);
            if (focused) document.getElementById(focused)?.focus();
          }
        }
        document.dispatchEvent(new CustomEvent("drover:refreshed", { detail: now }));
      }
    } catch (_) {
      // The next note or reconnect tries again.
    } finally {
      busy = false;
    }
  }

  const source = new EventSource(url);
  let lost = false;
  source.addEventListener("hello", () => {
    show("on", "Live");
    // Whatever changed while disconnected is fetched now.
    if (lost) refresh(wanted);
    lost = false;
  });
  source.addEventListener("error", () => {
    lost = true;
    if (source.readyState === EventSource.CLOSED) {
      show("off", "Live updates stopped: reload the page");
    } else {
      show("wait", "Reconnecting…");
    }
  });
  for (const kind of ["fleet", "device", "rollout"]) {
    source.addEventListener(kind, (event) => {
      if (kind === "fleet" && firing) {
        // Fleet notes carry the number of alerts firing, for the navigation.
        try {
          const n = Number(JSON.parse(event.data).firing);
          if (Number.isInteger(n) && n >= 0) {
            firing.textContent = String(n);
            firing.hidden = n === 0;
          }
        } catch (_) {
          // An older server's note without the count.
        }
      }
      if (wanted.includes(kind)) refresh([kind]);
    });
  }
  source.addEventListener("readings", (event) => {
    let data;
    try {
      data = JSON.parse(event.data);
    } catch (_) {
      return;
    }
    document.dispatchEvent(new CustomEvent("drover:readings", { detail: data.points || [] }));
  });
  window.addEventListener("pagehide", () => source.close());
})();
