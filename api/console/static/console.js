// resv console: local times, and the timeline's live tail. Plain JavaScript;
// every page works without it (the tail then needs a reload).
"use strict";

function localTimes(root) {
  for (const el of root.querySelectorAll("time[data-local]")) {
    const when = new Date(el.getAttribute("datetime"));
    if (!isNaN(when)) el.textContent = when.toLocaleString(undefined, { timeZoneName: "short" });
  }
}

// Polls for rows after the last one shown, about once a second, and appends
// them; a same-millisecond group cut by a poll is joined back together.
function liveTail(table) {
  let last = table.dataset.last;
  const status = document.getElementById("live-status");
  let shown = 0;
  async function poll() {
    try {
      const url = table.dataset.tail + (table.dataset.tail.includes("?") ? "&" : "?") + "after=" + encodeURIComponent(last);
      const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (response.status === 401) { if (status) status.textContent = "Signed out: reload to sign in again."; return; }
      if (response.ok) {
        const page = await response.json();
        if (page.count > 0) {
          const holder = document.createElement("table");
          holder.innerHTML = page.rows;
          const previous = table.tBodies[table.tBodies.length - 1];
          for (const body of Array.from(holder.tBodies)) {
            for (const row of body.rows) row.classList.add("fresh");
            if (previous && previous.dataset.ms === body.dataset.ms && table.tBodies[table.tBodies.length - 1] === previous) {
              while (body.rows.length) {
                const row = body.rows[0];
                row.cells[0].innerHTML = '<span class="tie" aria-label="same millisecond as the row above">┃</span>';
                previous.appendChild(row);
              }
              previous.classList.add("same-ms");
            } else {
              table.appendChild(body);
            }
          }
          last = page.last;
          shown += page.count;
          const none = document.getElementById("no-events");
          if (none) none.remove();
          if (status) status.textContent = "Live: " + shown + " new decision(s) since this page was loaded; the state above is as loaded (reload to act on the newest version).";
        }
        setTimeout(poll, page.more ? 0 : 1000);
        return;
      }
    } catch (e) { /* the server went away for a moment: try again */ }
    setTimeout(poll, 2000);
  }
  setTimeout(poll, 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes(document);
  const table = document.getElementById("timeline");
  if (table && table.dataset.tail) liveTail(table);
});
