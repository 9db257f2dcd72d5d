/* The bucket list: polls /api/buckets and /api/stats. */
"use strict";

(function () {
  const tbody = document.getElementById("bucket-list");

  function row(b, shared) {
    // the same bucket key under several access keys: link to this owner's bucket only
    const href = "/dashboard/" + encodeURIComponent(b.key) + (shared.has(b.key) ? "?owner=" + b.owner : "");
    const nameCell = IS.el("td", { class: "bucket-name" },
      IS.el("a", { class: "bucket-link", href: href, text: b.name || b.key }));
    if (b.auto_created) nameCell.append(IS.el("span", { class: "badge", title: "created by its first events, not by POST /api/buckets", text: "auto-created" }));
    if (b.removed) nameCell.append(IS.el("span", { class: "badge removed", text: "removed" }));
    return IS.el("tr", { class: "bucket-row", "data-bucket-key": b.key, "data-owner": b.owner },
      nameCell,
      IS.el("td", { class: "bucket-key" }, IS.el("code", { text: b.key })),
      IS.el("td", { class: "num event-count", "data-count": b.event_count, text: b.event_count.toLocaleString("en-US") }),
      IS.el("td", { class: "last-update", title: b.last_update ? IS.dateTime(b.last_update) : "", text: IS.ago(b.last_update) }),
      IS.el("td", { class: "created", text: IS.dateTime(b.created) }));
  }

  async function poll() {
    try {
      const [data, stats] = await Promise.all([IS.fetchJSON("/api/buckets"), IS.fetchJSON("/api/stats")]);
      const seen = new Set(), shared = new Set();
      for (const b of data.buckets) { if (seen.has(b.key)) shared.add(b.key); seen.add(b.key); }
      tbody.replaceChildren(...data.buckets.map((b) => row(b, shared)));
      document.getElementById("no-buckets").hidden = data.buckets.length > 0;
      document.getElementById("total-buckets").textContent = stats.buckets.toLocaleString("en-US");
      document.getElementById("total-events").textContent = stats.events.toLocaleString("en-US");
      document.getElementById("total-requests").textContent = stats.requests.toLocaleString("en-US");
      document.body.dataset.state = "live";
      IS.setStatus("live", "live · updated " + IS.clock(Date.now() / 1000));
    } catch (e) {
      document.body.dataset.state = "offline";
      IS.setStatus("offline", "collector unreachable");
    }
    setTimeout(poll, 2000);
  }
  poll();
})();
