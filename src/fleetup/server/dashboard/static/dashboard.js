// fleetup dashboard: confirm dialogs and live regions. No framework, no build step.
"use strict";

// <form data-confirm="..."> (or a submit button with data-confirm-button) asks first.
document.addEventListener("submit", (event) => {
  const button = event.submitter;
  const message = (button && button.dataset.confirmButton) || event.target.dataset.confirm;
  if (message && !window.confirm(message)) {
    event.preventDefault();
  }
});

// <div id="live" data-refresh="5"> is fetched again every 5 s and swapped in place,
// unless the tab is hidden or the operator is typing in it.
for (const region of document.querySelectorAll("[data-refresh][id]")) {
  const id = region.id;
  const seconds = Math.max(2, Number(region.dataset.refresh) || 10);
  window.setInterval(async () => {
    const current = document.getElementById(id);
    const focused = document.activeElement;
    if (!current || document.hidden || (focused && focused !== document.body && current.contains(focused))) {
      return;
    }
    try {
      const response = await fetch(window.location.href, {
        credentials: "same-origin", headers: {"Accept": "text/html"}});
      if (!response.ok || response.redirected) {
        return;
      }
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.getElementById(id);
      if (fresh) {
        current.replaceWith(document.importNode(fresh, true));
      }
    } catch (error) {
      // The server is restarting or the network is down: keep what is shown.
    }
  }, seconds * 1000);
}
