/* Shared helpers of the collector pages (no dependencies). */
"use strict";

const IS = {
  KEY_STORE: "isstreamer-access-key",

  /** The access key of this tab: from "#key=..." once (then removed from the address), else
   *  sessionStorage. Sent as X-IS-AccessKey; needed when the collector has keys configured. */
  key() {
    const m = /(?:^#|&)key=([^&]*)/.exec(location.hash);
    if (m) {
      sessionStorage.setItem(IS.KEY_STORE, decodeURIComponent(m[1]));
      history.replaceState(null, "", location.pathname + location.search);
    }
    return sessionStorage.getItem(IS.KEY_STORE) || "";
  },

  /** Show a small form asking for an access key (the collector answered 401). */
  askKey(message) {
    let form = document.getElementById("key-form");
    if (!form) {
      const input = IS.el("input", { id: "key-input", type: "password", autocomplete: "off",
        placeholder: "access key", "aria-label": "access key" });
      form = IS.el("form", { id: "key-form", class: "panel notice key-form" },
        IS.el("span", { id: "key-message" }), input, IS.el("button", { type: "submit", text: "Use key" }));
      form.addEventListener("submit", (e) => {
        e.preventDefault();
        sessionStorage.setItem(IS.KEY_STORE, input.value.trim());
        form.hidden = true;
      });
      document.querySelector("main").prepend(form);
    }
    document.getElementById("key-message").textContent = message;
    form.hidden = false;
  },

  /** GET a URL and decode its JSON; rejects with an Error carrying .status. */
  async fetchJSON(url) {
    const key = IS.key();
    const resp = await fetch(url, { cache: "no-store", headers: key ? { "X-IS-AccessKey": key } : {} });
    if (!resp.ok) {
      const err = new Error("HTTP " + resp.status + " for " + url);
      err.status = resp.status;
      if (resp.status === 401) {
        IS.askKey(key ? "This key is not accepted by the collector. " : "This collector needs an access key. ");
      }
      throw err;
    }
    return resp.json();
  },

  /** Create an element with attributes and children (strings become text nodes). */
  el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  },

  pad(n) { return String(n).padStart(2, "0"); },

  /** "14:03:07" for an epoch in seconds (local time). */
  clock(epoch) {
    const d = new Date(epoch * 1000);
    return IS.pad(d.getHours()) + ":" + IS.pad(d.getMinutes()) + ":" + IS.pad(d.getSeconds());
  },

  /** "2024-05-01 14:03:07" for an epoch in seconds (local time). */
  dateTime(epoch) {
    const d = new Date(epoch * 1000);
    return d.getFullYear() + "-" + IS.pad(d.getMonth() + 1) + "-" + IS.pad(d.getDate()) + " " + IS.clock(epoch);
  },

  /** "just now", "12 s ago", "5 min ago", "3 h ago", or a date. */
  ago(epoch) {
    if (epoch === null || epoch === undefined) return "never";
    const s = Math.max(0, Date.now() / 1000 - epoch);
    if (s < 2) return "just now";
    if (s < 60) return Math.floor(s) + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h ago";
    return IS.dateTime(epoch);
  },

  /** A value as a person reads it. */
  formatValue(v) {
    if (typeof v === "number") {
      if (Number.isInteger(v)) return v.toLocaleString("en-US");
      const a = Math.abs(v);
      if (a !== 0 && (a < 1e-3 || a >= 1e9)) return v.toExponential(3);
      return v.toLocaleString("en-US", { maximumFractionDigits: 4 });
    }
    if (typeof v === "boolean") return v ? "true" : "false";
    return String(v);
  },

  kindOf(v) {
    if (typeof v === "number") return "number";
    if (typeof v === "boolean") return "boolean";
    return "string";
  },

  /** Set the page's live/offline indicator. */
  setStatus(state, text) {
    const s = document.getElementById("status");
    if (!s) return;
    s.dataset.state = state;
    s.textContent = text;
  },
};
