/* A small line chart on <canvas>: time on x, numbers on y, hover read-out. No dependencies. */
"use strict";

class LineChart {
  /** @param {HTMLCanvasElement} canvas */
  constructor(canvas, options) {
    this.canvas = canvas;
    this.options = Object.assign({ color: "#2a6df4", fill: "rgba(42,109,244,0.10)" }, options || {});
    this.points = [];
    this.hover = null;
    this.pad = { left: 56, right: 14, top: 12, bottom: 28 };
    if (window.ResizeObserver) new ResizeObserver(() => this.draw()).observe(canvas);
    canvas.addEventListener("mousemove", (e) => {
      const r = canvas.getBoundingClientRect();
      this.hover = e.clientX - r.left;
      this.draw();
    });
    canvas.addEventListener("mouseleave", () => { this.hover = null; this.draw(); });
  }

  /** @param {Array<[number, number]>} points [epochSeconds, value] pairs */
  setData(points) {
    this.points = points.slice().sort((a, b) => a[0] - b[0]);
    this.canvas.dataset.points = String(this.points.length);
    this.draw();
  }

  static niceStep(span, count) {
    const raw = span / Math.max(1, count);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const n = raw / mag;
    return (n < 1.5 ? 1 : n < 3 ? 2 : n < 7 ? 5 : 10) * mag;
  }

  static timeStep(span, count) {
    const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800];
    const raw = span / Math.max(1, count);
    for (const s of steps) if (s >= raw) return s;
    return Math.ceil(raw / 604800) * 604800;
  }

  static formatTick(v, step) {
    const digits = Math.max(0, Math.min(8, -Math.floor(Math.log10(step) + 1e-9)));
    const a = Math.abs(v);
    if (a >= 1e6 || (a > 0 && a < 1e-4)) return v.toExponential(1);
    return v.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  }

  static timeLabel(epoch, step) {
    const d = new Date(epoch * 1000);
    const p = (n) => String(n).padStart(2, "0");
    if (step >= 86400) return d.getFullYear() + "-" + p(d.getMonth() + 1) + "-" + p(d.getDate());
    if (step >= 60) return p(d.getHours()) + ":" + p(d.getMinutes());
    return p(d.getHours()) + ":" + p(d.getMinutes()) + ":" + p(d.getSeconds());
  }

  draw() {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth, h = c.clientHeight;
    if (!w || !h) return;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(h * dpr);
    }
    const ctx = c.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.font = "11px system-ui, -apple-system, Segoe UI, Roboto, sans-serif";
    const pts = this.points;
    const P = this.pad, pw = w - P.left - P.right, ph = h - P.top - P.bottom;
    if (!pts.length) {
      ctx.fillStyle = "#6b7385";
      ctx.textAlign = "center";
      ctx.fillText("waiting for data…", w / 2, h / 2);
      return;
    }
    let t0 = pts[0][0], t1 = pts[pts.length - 1][0];
    if (t1 - t0 < 1) { t0 -= 0.5; t1 += 0.5; }
    let lo = Infinity, hi = -Infinity;
    for (const [, v] of pts) { if (v < lo) lo = v; if (v > hi) hi = v; }
    if (hi - lo < 1e-12) { const d = Math.abs(hi) > 0 ? Math.abs(hi) * 0.1 : 1; lo -= d; hi += d; }
    const ystep = LineChart.niceStep(hi - lo, 4);
    lo = Math.floor(lo / ystep) * ystep;
    hi = Math.ceil(hi / ystep) * ystep;
    const X = (t) => P.left + ((t - t0) / (t1 - t0)) * pw;
    const Y = (v) => P.top + (1 - (v - lo) / (hi - lo)) * ph;

    // grid and y labels
    ctx.strokeStyle = "#e9edf3";
    ctx.fillStyle = "#6b7385";
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let v = lo; v <= hi + ystep * 1e-6; v += ystep) {
      const y = Math.round(Y(v)) + 0.5;
      ctx.beginPath(); ctx.moveTo(P.left, y); ctx.lineTo(P.left + pw, y); ctx.stroke();
      ctx.fillText(LineChart.formatTick(v, ystep), P.left - 8, y);
    }
    // x labels (time)
    const tstep = LineChart.timeStep(t1 - t0, Math.max(2, Math.floor(pw / 90)));
    const tzOffset = new Date(t0 * 1000).getTimezoneOffset() * 60;
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (let t = Math.ceil((t0 - tzOffset) / tstep) * tstep + tzOffset; t <= t1; t += tstep) {
      const x = Math.round(X(t)) + 0.5;
      ctx.beginPath(); ctx.moveTo(x, P.top); ctx.lineTo(x, P.top + ph); ctx.stroke();
      ctx.fillText(LineChart.timeLabel(t, tstep), x, P.top + ph + 8);
    }
    ctx.strokeStyle = "#c9d0db";
    ctx.beginPath(); ctx.moveTo(P.left, P.top + ph + 0.5); ctx.lineTo(P.left + pw, P.top + ph + 0.5); ctx.stroke();

    // area and line
    ctx.beginPath();
    pts.forEach(([t, v], i) => (i ? ctx.lineTo(X(t), Y(v)) : ctx.moveTo(X(t), Y(v))));
    ctx.lineTo(X(pts[pts.length - 1][0]), P.top + ph);
    ctx.lineTo(X(pts[0][0]), P.top + ph);
    ctx.closePath();
    ctx.fillStyle = this.options.fill;
    ctx.fill();
    ctx.beginPath();
    pts.forEach(([t, v], i) => (i ? ctx.lineTo(X(t), Y(v)) : ctx.moveTo(X(t), Y(v))));
    ctx.strokeStyle = this.options.color;
    ctx.lineWidth = 2;
    ctx.lineJoin = "round";
    ctx.stroke();
    const last = pts[pts.length - 1];
    ctx.fillStyle = this.options.color;
    ctx.beginPath(); ctx.arc(X(last[0]), Y(last[1]), 3.5, 0, Math.PI * 2); ctx.fill();
    if (pts.length < 40) {
      for (const [t, v] of pts) { ctx.beginPath(); ctx.arc(X(t), Y(v), 2, 0, Math.PI * 2); ctx.fill(); }
    }

    // hover read-out
    if (this.hover !== null && this.hover >= P.left && this.hover <= P.left + pw) {
      const t = t0 + ((this.hover - P.left) / pw) * (t1 - t0);
      let best = pts[0];
      for (const p of pts) if (Math.abs(p[0] - t) < Math.abs(best[0] - t)) best = p;
      const x = X(best[0]), y = Y(best[1]);
      ctx.strokeStyle = "rgba(29,36,51,0.35)";
      ctx.lineWidth = 1;
      ctx.beginPath(); ctx.moveTo(x, P.top); ctx.lineTo(x, P.top + ph); ctx.stroke();
      ctx.fillStyle = this.options.color;
      ctx.beginPath(); ctx.arc(x, y, 4.5, 0, Math.PI * 2); ctx.fill();
      const label = IS.formatValue(best[1]) + "  ·  " + IS.clock(best[0]);
      ctx.font = "12px system-ui, -apple-system, Segoe UI, Roboto, sans-serif";
      const tw = ctx.measureText(label).width + 14;
      const bx = Math.min(Math.max(x - tw / 2, P.left), P.left + pw - tw);
      ctx.fillStyle = "rgba(29,36,51,0.9)";
      ctx.fillRect(bx, P.top, tw, 22);
      ctx.fillStyle = "#fff";
      ctx.textAlign = "left";
      ctx.textBaseline = "middle";
      ctx.fillText(label, bx + 7, P.top + 11);
    }
  }
}
