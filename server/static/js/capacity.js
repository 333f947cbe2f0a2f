// The machine's capacity, as GET /api/capacity measures it: the inference budget and what the
// streams use (a meter), how many more streams like the running ones fit, whether quality of
// service is lowering fps, and each stream's effective fps. A gateway has no pipeline of its
// own (503): the panel hides.
import { el } from "./ui.js";

export class CapacityPanel {
  constructor(api) {
    this.api = api;
    this.perStream = {};
    this.meter = el("meter", { id: "capacity-meter", min: "0", max: "1", low: "0.7",
      high: "0.9", optimum: "0.3", "aria-label": "inference budget used" });
    this.text = el("span", { class: "capacity-text" });
    this.node = el("section", { class: "capacity", id: "capacity", hidden: true },
      el("strong", { text: "Capacity" }), this.meter, this.text);
  }

  // Fetch and show; returns {stream id: {fps, effective_fps, priority, ...}} ({} if unknown).
  async refresh() {
    let c;
    try {
      c = await this.api.request("GET", "/api/capacity");
    } catch {
      this.node.hidden = true;
      this.perStream = {};
      return this.perStream;
    }
    this.node.hidden = false;
    this.perStream = c.per_stream || {};
    const share = c.budget_ms_per_s > 0 ? c.used_ms_per_s / c.budget_ms_per_s : 0;
    this.meter.value = Math.min(1, share);
    const r = c.request;
    const parts = [
      `${c.streams} stream${c.streams === 1 ? "" : "s"}`,
      `inference ${Math.round(c.used_ms_per_s)} of ${Math.round(c.budget_ms_per_s)} ms/s ` +
        `(${Math.round(share * 100)}%)`,
      `${c.more_streams} more ${r.width}x${r.height} at ${r.fps} fps fit`,
    ];
    if (c.degraded) parts.push("overloaded: lower-priority streams run at reduced fps");
    if (!c.enabled) parts.push("admission control off");
    this.text.textContent = parts.join(" · ");
    Object.assign(this.node.dataset, { streams: c.streams, more: c.more_streams,
      used: c.used_ms_per_s, budget: c.budget_ms_per_s, degraded: c.degraded ? "1" : "0" });
    return this.perStream;
  }
}

// "8.0 fps" for a stream at its requested rate, "5.0 of 10 fps" when QoS lowered it.
export function effectiveFps(q) {
  if (!q) return null;
  const reduced = q.fps > 0 && q.effective_fps < q.fps - 0.05;
  return { reduced, text: reduced ? `${q.effective_fps.toFixed(1)} of ${q.fps} fps`
    : `${q.effective_fps.toFixed(1)} fps` };
}
