// aion UI: confirmations, JSON checks and live updates; the pages work without it.
"use strict";
document.addEventListener("submit", (event) => {
  const form = event.target;
  const field = form.dataset.json && form.elements[form.dataset.json];
  if (field) {
    const shown = form.querySelector(".json-error");
    try {
      JSON.parse(field.value.trim() || "null");
      if (shown) { shown.hidden = true; }
    } catch (error) {
      event.preventDefault();
      if (shown) { shown.textContent = "Not valid JSON: " + error.message; shown.hidden = false; }
      field.focus();
      return;
    }
  }
  if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
  }
});
window.addEventListener("DOMContentLoaded", () => {
  const live = document.getElementById("live");
  if (!live || live.dataset.open !== "yes" || !window.EventSource) { return; }
  const source = new EventSource(live.dataset.events);
  let timer = null;
  const reload = () => {
    const busy = document.activeElement && ["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement.tagName);
    if (busy) { timer = setTimeout(reload, 1000); return; }
    window.location.replace(window.location.pathname);
  };
  source.addEventListener("changed", () => { if (!timer) { timer = setTimeout(reload, 300); } });
  source.addEventListener("end", () => { source.close(); if (!timer) { timer = setTimeout(reload, 100); } });
});
