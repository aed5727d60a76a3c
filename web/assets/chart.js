// A small live line chart on a <canvas>: a time window that grows from
// 30 seconds to its full length as data arrives, several series, a y axis
// that fits the data. Colours come from CSS custom
// properties so the chart follows the page's theme.

export class LiveChart {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {{series: {name: string, color: string}[], windowSecs: number, format: (v: number) => string,
   *   unit?: number, floor?: number}} opts
   *   color is a CSS custom property name such as '--chart-1'; unit 1024 makes
   *   the y axis round in binary units; floor is the smallest y range.
   */
  constructor(canvas, opts) {
    this.canvas = canvas;
    this.opts = opts;
    this.points = []; // [{t: ms, values: number[]}]
    this.observer = new ResizeObserver(() => this.draw());
    this.observer.observe(canvas);
  }

  push(values, t = Date.now()) {
    this.points.push({ t, values });
    const oldest = t - this.opts.windowSecs * 1000;
    while (this.points.length > 2 && this.points[1].t < oldest) this.points.shift();
    this.draw();
  }

  destroy() {
    this.observer.disconnect();
  }

  draw() {
    const { canvas } = this;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const style = getComputedStyle(canvas);
    const color = (name) => style.getPropertyValue(name).trim() || '#888';
    const pad = { left: 64, right: 10, top: 10, bottom: 22 };
    const plotW = Math.max(10, width - pad.left - pad.right);
    const plotH = Math.max(10, height - pad.top - pad.bottom);
    const now = this.points.length ? this.points[this.points.length - 1].t : Date.now();
    const first = this.points.length ? this.points[0].t : now;
    const span = Math.min(this.opts.windowSecs, Math.max(30, Math.ceil((now - first) / 1000 / 30) * 30));
    const t0 = now - span * 1000;
    let max = this.opts.floor || 0;
    for (const p of this.points) for (const v of p.values) max = Math.max(max, v);
    max = niceCeiling(max, this.opts.unit || 1);
    ctx.font = `11px ${style.fontFamily || 'sans-serif'}`;
    ctx.lineWidth = 1;
    // Grid and y labels.
    ctx.strokeStyle = color('--chart-grid');
    ctx.fillStyle = color('--muted');
    ctx.textAlign = 'right';
    ctx.textBaseline = 'middle';
    for (let i = 0; i <= 4; i += 1) {
      const y = pad.top + plotH - (plotH * i) / 4;
      ctx.beginPath();
      ctx.moveTo(pad.left, Math.round(y) + 0.5);
      ctx.lineTo(pad.left + plotW, Math.round(y) + 0.5);
      ctx.stroke();
      ctx.fillText(this.opts.format((max * i) / 4), pad.left - 6, y);
    }
    // Time labels.
    ctx.textAlign = 'center';
    ctx.textBaseline = 'top';
    const steps = span >= 60 ? 4 : 3;
    for (let i = 0; i <= steps; i += 1) {
      const secsAgo = Math.round(span - (span * i) / steps);
      const x = pad.left + (plotW * i) / steps;
      ctx.fillText(secsAgo ? `-${secsAgo}s` : 'now', Math.min(Math.max(x, pad.left + 12), pad.left + plotW - 12), pad.top + plotH + 6);
    }
    // Series.
    const xOf = (t) => pad.left + ((t - t0) / (span * 1000)) * plotW;
    const yOf = (v) => pad.top + plotH - (max ? (v / max) * plotH : 0);
    this.opts.series.forEach((s, idx) => {
      ctx.strokeStyle = color(s.color);
      ctx.lineWidth = 2;
      ctx.lineJoin = 'round';
      ctx.beginPath();
      this.points.forEach((p, i) => {
        const x = Math.max(pad.left, xOf(p.t));
        const y = yOf(p.values[idx] || 0);
        if (i === 0) ctx.moveTo(x, y);
        else ctx.lineTo(x, y);
      });
      ctx.stroke();
    });
  }
}

/** A round number at or above `v`: 1, 2, 4 or 5 times a power of ten, in
 * multiples of the largest power of `unit` below `v` (so 1024 gives 500 KiB,
 * not 488.3 KiB). */
function niceCeiling(v, unit) {
  if (!(v > 0)) return 1;
  const scale = unit > 1 ? unit ** Math.max(0, Math.floor(Math.log(v) / Math.log(unit))) : 1;
  const x = v / scale;
  const p = 10 ** Math.floor(Math.log10(x));
  for (const m of [1, 2, 4, 5, 10]) if (m * p >= x) return m * p * scale;
  return 10 * p * scale;
}
