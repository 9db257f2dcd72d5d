/* A small line chart on <canvas>: time on x, numbers on y, hover read-out. No dependencies.
 *
 * The data is a series of columns [tFirst, tLast, min, max, count] (the server reduces each
 * key to one column per pixel of the plot), drawn over the series' own time range: a column
 * is a vertical stroke from its min to its max, so spikes survive any number of events. */
"use strict";

class LineChart {
  /** @param {HTMLCanvasElement} canvas */
  constructor(canvas, options) {
    this.canvas = canvas;
    this.options = Object.assign({ color: "#2a6df4", fill: "rgba(42,109,244,0.10)" }, options || {});
    this.columns = [];
    this.t0 = 0;
    this.t1 = 0;
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

  /** Width in CSS pixels of the plot area (the number of columns worth asking the server for). */
  plotWidth() {
    const w = this.canvas.clientWidth || 600;
    return Math.max(2, Math.round(w - this.pad.left - this.pad.right));
  }

  /** @param {{t0:number, t1:number, count:number, columns:Array<Array<number>>}} series */
  setSeries(series) {
    this.columns = series.columns;
    this.t0 = series.t0;
    this.t1 = series.t1;
    this.canvas.dataset.points = String(series.count);
    this.canvas.dataset.columns = String(series.columns.length);
    this.canvas.dataset.t0 = String(series.t0);
    this.canvas.dataset.t1 = String(series.t1);
    this.draw();
  }

  /** @param {Array<[number, number]>} points [epochSeconds, value] pairs (one column each) */
  setData(points) {
    const pts = points.slice().sort((a, b) => a[0] - b[0]);
    this.setSeries({
      t0: pts.length ? pts[0][0] : 0, t1: pts.length ? pts[pts.length - 1][0] : 0, count: pts.length,
      columns: pts.map(([t, v]) => [t, t, v, v, 1]),
    });
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
    const cols = this.columns;
    const P = this.pad, pw = w - P.left - P.right, ph = h - P.top - P.bottom;
    if (!cols.length) {
      ctx.fillStyle = "#6b7385";
      ctx.textAlign = "center";
      ctx.fillText("waiting for data…", w / 2, h / 2);
      return;
    }
    let t0 = this.t0, t1 = this.t1;
    if (t1 - t0 < 1) { const mid = (t0 + t1) / 2; t0 = mid - 0.5; t1 = mid + 0.5; }
    let lo = Infinity, hi = -Infinity;
    for (const c of cols) { if (c[2] < lo) lo = c[2]; if (c[3] > hi) hi = c[3]; }
    if (hi - lo < 1e-12) { const d = Math.abs(hi) > 0 ? Math.abs(hi) * 0.1 : 1; lo -= d; hi += d; }
    const ystep = LineChart.niceStep(hi - lo, 4);
    lo = Math.floor(lo / ystep) * ystep;
    hi = Math.ceil(hi / ystep) * ystep;
    const X = (t) => P.left + ((t - t0) / (t1 - t0)) * pw;
    const Y = (v) => P.top + (1 - (v - lo) / (hi - lo)) * ph;
    const mid = (c) => X((c[0] + c[1]) / 2);

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

    // area under the max envelope, then the min/max strokes joined column to column
    ctx.beginPath();
    cols.forEach((c, i) => (i ? ctx.lineTo(mid(c), Y(c[3])) : ctx.moveTo(mid(c), Y(c[3]))));
    ctx.lineTo(mid(cols[cols.length - 1]), P.top + ph);
    ctx.lineTo(mid(cols[0]), P.top + ph);
    ctx.closePath();
    ctx.fillStyle = this.options.fill;
    ctx.fill();
    ctx.beginPath();
    let up = true;
    cols.forEach((c, i) => {
      const x = mid(c);
      const [a, b] = up ? [c[2], c[3]] : [c[3], c[2]];
      if (i) ctx.lineTo(x, Y(a)); else ctx.moveTo(x, Y(a));
      if (c[3] !== c[2]) { ctx.lineTo(x, Y(b)); up = !up; }
    });
    ctx.strokeStyle = this.options.color;
    ctx.lineWidth = cols.length > pw / 3 ? 1.25 : 2;
    ctx.lineJoin = "round";
    ctx.stroke();
    const last = cols[cols.length - 1];
    ctx.fillStyle = this.options.color;
    ctx.beginPath(); ctx.arc(mid(last), Y(last[3]), 3.5, 0, Math.PI * 2); ctx.fill();
    if (cols.length < 40) {
      for (const c of cols) { ctx.beginPath(); ctx.arc(mid(c), Y(c[3]), 2, 0, Math.PI * 2); ctx.fill(); }
    }

    // hover read-out
    if (this.hover !== null && this.hover >= P.left && this.hover <= P.left + pw) {
      let best = cols[0];
      for (const c of cols) if (Math.abs(mid(c) - this.hover) < Math.abs(mid(best) - this.hover)) best = c;
      const x = mid(best), y = Y(best[3]);
      ctx.strokeStyle = "rgba(29,36,51,0.35)";
      ctx.lineWidth = 1;
      ctx.beginPath(); ctx.moveTo(x, P.top); ctx.lineTo(x, P.top + ph); ctx.stroke();
      ctx.fillStyle = this.options.color;
      ctx.beginPath(); ctx.arc(x, y, 4.5, 0, Math.PI * 2); ctx.fill();
      const range = best[2] === best[3] ? IS.formatValue(best[3])
        : IS.formatValue(best[2]) + " – " + IS.formatValue(best[3]) + " (" + best[4] + ")";
      const label = range + "  ·  " + IS.clock(best[0]);
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
