/* One bucket: a chart per numeric key, the latest value of string/boolean keys.
 *
 * One request per refresh (GET /api/buckets/{key}/dashboard): the bucket, the latest values,
 * and, when the bucket's event count differs from the one the drawn series reflect, every
 * numeric key reduced by the server to one min/max column per pixel of the chart over the
 * key's own time range. */
"use strict";

(function () {
  const POLL_MS = 1000;
  const bucketKey = decodeURIComponent(location.pathname.replace(/^\/dashboard\//, ""));
  const filter = new URLSearchParams(location.search).get("owner");
  const base = "/api/buckets/" + encodeURIComponent(bucketKey) + "/dashboard";
  const cards = new Map(); // key -> {card, kind, count, chart}
  let known = null; // the bucket's event count whose series are drawn
  let refreshes = 0;

  document.body.dataset.bucketKey = bucketKey;
  document.getElementById("bucket-key").textContent = bucketKey;
  document.getElementById("bucket-name").textContent = bucketKey;
  document.title = bucketKey + " · isstreamer collector";

  function makeCard(item, kind) {
    const card = IS.el("article", { class: "key-card", "data-key": item.key, "data-kind": kind });
    const head = IS.el("div", { class: "head" },
      IS.el("h3", { class: "key-name", title: item.key, text: item.key }));
    const value = IS.el("div", { class: "latest-value" });
    const meta = IS.el("div", { class: "key-meta" });
    const entry = { card, kind, count: -1, value, meta, chart: null };
    if (kind === "number") {
      head.append(value);
      card.append(head, meta);
      const canvas = IS.el("canvas", { class: "chart", "data-key": item.key, "aria-label": "chart of " + item.key, role: "img" });
      card.append(canvas);
      entry.chart = new LineChart(canvas);
    } else {
      card.append(head, value, meta);
    }
    return entry;
  }

  function place(entry, kind) {
    const container = document.getElementById(kind === "number" ? "charts" : "values");
    // keep cards sorted by key inside their section
    const siblings = Array.from(container.children);
    const next = siblings.find((c) => c.dataset.key > entry.card.dataset.key);
    container.insertBefore(entry.card, next || null);
  }

  function update(item, series) {
    const kind = IS.kindOf(item.value);
    let entry = cards.get(item.key);
    if (entry && entry.kind !== kind) { entry.card.remove(); cards.delete(item.key); entry = null; }
    if (!entry) {
      entry = makeCard(item, kind);
      cards.set(item.key, entry);
      place(entry, kind);
    }
    const changed = entry.count !== item.count;
    entry.value.textContent = IS.formatValue(item.value);
    entry.value.dataset.value = JSON.stringify(item.value);
    entry.value.classList.toggle("bool-true", item.value === true);
    entry.value.classList.toggle("bool-false", item.value === false);
    entry.value.title = String(item.value);
    entry.meta.textContent = item.count.toLocaleString("en-US") + (item.count === 1 ? " event" : " events") +
      " · latest " + IS.clock(item.epoch) + " (" + IS.ago(item.received) + ")";
    entry.card.dataset.count = String(item.count);
    if (changed && entry.count >= 0) {
      entry.card.classList.remove("flash");
      void entry.card.offsetWidth;
      entry.card.classList.add("flash");
    }
    entry.count = item.count;
    if (entry.chart && series && series[item.key]) entry.chart.setSeries(series[item.key]);
  }

  function columns() {
    for (const entry of cards.values()) if (entry.chart) return entry.chart.plotWidth();
    const charts = document.getElementById("charts");
    return Math.max(100, Math.round((charts.clientWidth || 1200) / 2 - 90));
  }

  function showBucket(b, keys) {
    document.getElementById("bucket-name").textContent = b.name || b.key;
    document.title = (b.name || b.key) + " · isstreamer collector";
    document.getElementById("event-count").textContent = b.event_count.toLocaleString("en-US");
    document.getElementById("key-count").textContent = String(keys);
    const lu = document.getElementById("last-update");
    lu.textContent = IS.ago(b.last_update);
    lu.title = b.last_update ? IS.dateTime(b.last_update) : "";
    const badges = document.getElementById("bucket-badges");
    badges.replaceChildren();
    if (b.auto_created) badges.append(IS.el("span", { class: "badge", text: "auto-created" }));
    if (b.removed) badges.append(IS.el("span", { class: "badge removed", text: "removed" }));
  }

  async function poll() {
    document.body.dataset.refreshes = String(++refreshes);
    try {
      const cols = columns();
      let url = base + "?columns=" + cols;
      if (known !== null) url += "&known=" + known;
      if (filter) url += "&owner=" + encodeURIComponent(filter);
      const data = await IS.fetchJSON(url);
      const b = data.bucket;
      showBucket(b, data.latest.length);
      for (const item of data.latest) update(item, data.series);
      // series drawn at the plot's real width (the first answer came before any chart existed)
      if (data.series) known = columns() === cols ? data.series_count : null;
      document.getElementById("charts-section").hidden = !document.getElementById("charts").children.length;
      document.getElementById("values-section").hidden = !document.getElementById("values").children.length;
      document.getElementById("missing").hidden = data.latest.length > 0;
      document.body.dataset.state = "live";
      IS.setStatus("live", "live · updated " + IS.clock(Date.now() / 1000));
    } catch (e) {
      if (e.status === 404) {
        document.getElementById("missing").hidden = false;
        document.body.dataset.state = "missing";
        IS.setStatus("missing", "waiting for the bucket");
      } else if (e.status === 401 || e.status === 403) {
        document.body.dataset.state = "unauthorized";
        IS.setStatus("offline", "needs an access key");
      } else {
        document.body.dataset.state = "offline";
        IS.setStatus("offline", "collector unreachable");
      }
    }
    setTimeout(poll, POLL_MS);
  }
  poll();
})();
