// gatewatch console: a little progressive enhancement. Every page works without it.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // Ask before destructive clicks.
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (ev) => {
      if (!window.confirm(form.dataset.confirm)) ev.preventDefault();
    });
  }
  // Show each UTC time in the reader's own zone on hover.
  for (const t of document.querySelectorAll("time[datetime]")) {
    const d = new Date(t.getAttribute("datetime"));
    if (!isNaN(d)) t.title = d.toLocaleString();
  }
  // Refresh the incident list every 30 seconds, if asked to (remembered).
  const auto = document.getElementById("auto-refresh");
  if (auto) {
    auto.checked = localStorage.getItem("gw-auto-refresh") === "1";
    auto.addEventListener("change", () => localStorage.setItem("gw-auto-refresh", auto.checked ? "1" : "0"));
    setInterval(() => { if (auto.checked && !document.hidden) window.location.reload(); }, 30000);
  }
});
