// One camera, large: live view with the rules drawn and editable, counts, occupancy and dwell,
// the latest events (stored, then live), the camera's health and effective fps, and (when the
// stream gates its detector on motion) the motion mask over the preview.
import { effectiveFps } from "./capacity.js";
import { drawCamera } from "./draw.js";
import { Editor } from "./editor.js";
import { el, fmtMs, fmtTime, sum } from "./ui.js";

const EVENT_ROWS = 100;

export class CameraView {
  constructor(app, id) {
    this.app = app;
    this.id = id;
    this.rules = { lines: [], zones: [] };
    this.status = null;
    this.version = -1;
    this.timers = [];
    this.editing = null; // the id of a rule being redrawn, or null for a new one
    this.events = []; // newest first, capped
    this.seen = new Set(); // keys of the events listed (stored and live overlap)
    this.motion = null; // the last motion mask while the overlay is on
    this.motionTimer = null;
  }

  mount(root) {
    const id = this.id;
    this.canvas = el("canvas", { id: "camera-canvas", width: 960, height: 540,
      "aria-label": `camera ${id}` });
    this.ctx = this.canvas.getContext("2d");
    this.editor = new Editor(this.canvas, (kind, points) => this.drawn(kind, points));
    this.lineBtn = el("button", { type: "button", id: "draw-line", text: "Draw line",
      onclick: () => this.startDraw("line") });
    this.zoneBtn = el("button", { type: "button", id: "draw-zone", text: "Draw zone",
      onclick: () => this.startDraw("zone") });
    this.hint = el("p", { class: "empty hint" });
    this.delay = el("span", { class: "delay", id: "delay" });
    this.motionBtn = el("button", { type: "button", id: "motion-toggle", text: "Motion",
      "aria-pressed": "false", disabled: true, title: "motion gating is off for this camera",
      onclick: () => this.toggleMotion() });
    this.form = this.ruleForm();
    this.health = el("table", { id: "health" });
    this.counts = el("div", { id: "counts" });
    this.rulesList = el("ul");
    this.eventsList = el("ul", { class: "events", id: "events" });
    root.append(el("div", { class: "view" },
      el("div", { class: "stage" },
        el("div", { class: "toolbar" }, el("a", { href: "#/", text: "← all cameras" }),
          el("strong", { text: id }), this.lineBtn, this.zoneBtn, this.motionBtn, this.delay),
        this.canvas, this.hint, this.form),
      el("div", { class: "side" },
        el("section", {}, el("h3", { text: "Health" }), this.health),
        el("section", {}, el("h3", { text: "Counts" }), this.counts),
        el("section", { class: "rules" }, el("h3", { text: "Lines and zones" }), this.rulesList),
        el("section", {}, el("h3", { text: "Events" }), this.eventsList))));
    this.app.live.watch([id]);
    this.app.live.onEvent = (e) => {
      if (e.stream === this.id) this.addEvents([e]);
    };
    this.loadRules();
    this.loadEvents();
    this.refreshHealth();
    this.timers.push(setInterval(() => this.refreshHealth(), 2000));
    this.loadMotion(false);
  }

  unmount() {
    this.timers.forEach(clearInterval);
    clearInterval(this.motionTimer);
    this.app.live.onEvent = () => {};
  }

  // -- rules ------------------------------------------------------------------------------
  base() {
    return `/api/streams/${encodeURIComponent(this.id)}`;
  }

  async loadRules() {
    try {
      this.rules = await this.app.api.request("GET", `${this.base()}/rules`);
    } catch (e) {
      this.app.banner(e.message);
      return;
    }
    this.rulesList.replaceChildren(
      ...this.rules.lines.map((r) => this.ruleRow("lines", r)),
      ...this.rules.zones.map((r) => this.ruleRow("zones", r)));
    if (!this.rules.lines.length && !this.rules.zones.length) {
      this.rulesList.append(el("li", { class: "empty", text: "none yet: draw one on the frame" }));
    }
    this.version = -1;
  }

  ruleRow(kind, r) {
    return el("li", { dataset: { rule: r.id } },
      el("span", { class: "rid", text: `${kind === "lines" ? "line" : "zone"} ${r.id}` +
        (r.classes.length ? ` (${r.classes.join(", ")})` : "") }),
      el("button", { type: "button", text: "Redraw", title: "Draw its shape again",
        onclick: () => this.startDraw(kind === "lines" ? "line" : "zone", r) }),
      el("button", { type: "button", text: "Delete", onclick: () => this.remove(kind, r.id) }));
  }

  startDraw(kind, rule = null) {
    this.editing = rule;
    this.form.hidden = true;
    this.editor.start(kind);
    this.hint.textContent = kind === "line"
      ? "drag across the frame (people moving to the arrow's side count as in)"
      : "click the corners; click the first one again to close";
  }

  ruleForm() {
    this.ruleId = el("input", { id: "rule-id", placeholder: "name (letters, digits, _ . -)",
      required: true, pattern: "[A-Za-z0-9][A-Za-z0-9_.\\-]{0,63}" });
    this.ruleClasses = el("input", { id: "rule-classes", value: "person",
      placeholder: "classes, comma-separated (empty: all)" });
    this.ruleError = el("p", { class: "error", id: "rule-error", role: "alert" });
    const form = el("form", { class: "ruleform", id: "rule-form", hidden: true, onsubmit: (e) => {
      e.preventDefault();
      this.save();
    } }, el("label", {}, "Name ", this.ruleId), el("label", {}, "Classes ", this.ruleClasses),
    el("div", { class: "toolbar" }, el("button", { type: "submit", id: "rule-save", text: "Save" }),
      el("button", { type: "button", text: "Cancel", onclick: () => this.cancelDraw() })),
    this.ruleError);
    return form;
  }

  drawn(kind, points) {
    this.pending = { kind, points };
    this.hint.textContent = "";
    this.form.hidden = false;
    this.ruleError.textContent = "";
    if (this.editing) {
      this.ruleId.value = this.editing.id;
      this.ruleId.disabled = true;
      this.ruleClasses.value = this.editing.classes.join(", ");
    } else {
      this.ruleId.disabled = false;
      this.ruleId.value = "";
      this.ruleId.focus();
    }
  }

  cancelDraw() {
    this.editor.cancel();
    this.pending = null;
    this.editing = null;
    this.form.hidden = true;
    this.hint.textContent = "";
  }

  async save() {
    const { kind, points } = this.pending;
    const classes = this.ruleClasses.value.split(",").map((c) => c.trim()).filter(Boolean);
    const body = this.editing ? { ...this.editing, classes } : { id: this.ruleId.value.trim(), classes };
    if (kind === "line") body.points = points;
    else body.polygon = points;
    const plural = kind === "line" ? "lines" : "zones";
    try {
      if (this.editing) {
        await this.app.api.request("PUT", `${this.base()}/${plural}/${encodeURIComponent(body.id)}`, body);
      } else {
        await this.app.api.request("POST", `${this.base()}/${plural}`, body);
      }
    } catch (e) {
      this.ruleError.textContent = e.message;
      return;
    }
    this.cancelDraw();
    await this.loadRules();
  }

  async remove(plural, ruleId) {
    if (!confirm(`Delete ${plural.slice(0, -1)} ${ruleId}?`)) return;
    try {
      await this.app.api.request("DELETE", `${this.base()}/${plural}/${encodeURIComponent(ruleId)}`);
    } catch (e) {
      this.app.banner(e.message);
    }
    await this.loadRules();
  }

  // -- events -----------------------------------------------------------------------------
  async loadEvents() {
    try {
      const page = await this.app.api.request("GET",
        `/api/events?stream=${encodeURIComponent(this.id)}&order=desc&limit=${EVENT_ROWS}`);
      this.addEvents(page.events.slice().reverse());
    } catch (e) {
      this.eventsList.replaceChildren(el("li", { class: "empty", text: e.message }));
    }
  }

  addEvents(events) {
    for (const e of events) {
      const key = `${e.kind}|${e.rule}|${e.track}|${e.frame}|${e.ts}`;
      if (this.seen.has(key)) continue;
      this.seen.add(key);
      this.events.unshift(e);
      const row = el("li", { dataset: { kind: e.kind } }, el("span", { class: "t",
        text: fmtTime(e.ts) }), describe(e));
      this.eventsList.prepend(row);
    }
    while (this.events.length > EVENT_ROWS) {
      const old = this.events.pop();
      this.seen.delete(`${old.kind}|${old.rule}|${old.track}|${old.frame}|${old.ts}`);
      this.eventsList.lastElementChild?.remove();
    }
  }

  // -- motion mask ------------------------------------------------------------------------
  async loadMotion(show) {
    let m;
    try {
      m = await this.app.api.request("GET", `${this.base()}/motion`);
    } catch {
      m = { enabled: false }; // a gateway, or the stream is gone
    }
    this.motionBtn.disabled = !m.enabled;
    this.motionBtn.title = m.enabled
      ? "show the motion mask: cells that moved, as the detector's gate saw them"
      : "motion gating is off for this camera (streams[].motion.enabled)";
    this.motion = show && m.enabled && m.grid ? m : null;
    this.version = -1;
  }

  toggleMotion() {
    const on = this.motionBtn.getAttribute("aria-pressed") !== "true";
    this.motionBtn.setAttribute("aria-pressed", String(on));
    clearInterval(this.motionTimer);
    this.motion = null;
    this.version = -1;
    if (on) {
      this.loadMotion(true);
      this.motionTimer = setInterval(() => this.loadMotion(true), 500);
    }
  }

  // -- health -----------------------------------------------------------------------------
  async refreshHealth() {
    const api = this.app.api;
    try {
      const [s, h, metrics, capacity] = await Promise.all([
        api.request("GET", this.base()),
        api.request("GET", `${this.base()}/health`).catch(() => ({ enabled: false })),
        api.metricsText().catch(() => ""),
        api.request("GET", "/api/capacity").catch(() => null),
      ]);
      const eff = effectiveFps(capacity?.per_stream?.[this.id]);
      this.status = s;
      // a gateway's camera that no worker runs (yet) has no report: say why
      const checks = !h.enabled ? "off" : !h.checks ? h.reason || "not reported"
        : Object.entries(h.checks).filter(([, on]) => on).map(([c]) => c).join(", ") || "ok";
      const rows = [
        ["state", s.state], ["decode fps", s.decode_fps.toFixed(1)],
        ["inference fps", s.infer_fps.toFixed(1)],
        ["effective fps", eff ? eff.text : "–"], ["frame drops", s.drops],
        ["reconnects", s.reconnects], ["errors", s.errors],
        ["P99 frame to send", fmtMs(p99(metrics, "vigil_frame_to_send_seconds"))],
        ["camera checks", checks], ["last error", s.last_error || "none"],
      ];
      this.health.replaceChildren(...rows.map(([k, v]) =>
        el("tr", { dataset: { key: k } }, el("th", { text: k }), el("td", { text: String(v) }))));
    } catch (e) {
      if (e.status === 404) location.hash = "#/";
    }
  }

  renderCounts(cam) {
    const c = cam.counts;
    if (!c) return;
    const rows = [];
    for (const [id, l] of Object.entries(c.lines || {})) {
      const classes = new Set([...Object.keys(l.in || {}), ...Object.keys(l.out || {})]);
      rows.push(el("tr", {}, el("th", { text: `line ${id}` }),
        el("td", { dataset: { count: id }, text: String(sum(l.in) + sum(l.out)) }),
        el("td", { text: `in ${sum(l.in)} · out ${sum(l.out)}` }),
        el("td", { text: [...classes].map((k) => `${k} ${(l.in?.[k] || 0) + (l.out?.[k] || 0)}`).join(", ") })));
    }
    for (const [id, z] of Object.entries(c.zones || {})) {
      const dwell = Object.entries(z.mean_dwell_s || {}).map(([k, v]) => `${k} ${v.toFixed(1)} s`);
      rows.push(el("tr", {}, el("th", { text: `zone ${id}` }),
        el("td", { dataset: { count: id }, text: String(sum(z.entered)) }),
        el("td", { text: `now ${sum(z.occupancy)} · entered ${sum(z.entered)} · left ${sum(z.exited)}` }),
        el("td", { text: dwell.length ? `mean dwell ${dwell.join(", ")}` : "" })));
    }
    const table = el("table", {}, el("tr", {}, el("th", { text: "rule" }), el("th", { text: "total" }),
      el("th", { text: "" }), el("th", { text: "by class" })), ...rows);
    this.counts.replaceChildren(rows.length ? table : el("p", { class: "empty", text: "no rules" }));
  }

  draw(now) {
    const cam = this.app.live.camera(this.id);
    const fresh = cam.pick(now);
    const draft = this.editor.draft;
    if (!fresh && cam.version === this.version && !draft) return;
    if (cam.version !== this.version) this.renderCounts(cam);
    this.version = cam.version;
    const width = Math.min(1920, Math.max(480, this.canvas.clientWidth * devicePixelRatio));
    this.drawnInfo = drawCamera(this.ctx, cam, { classes: this.app.classes, rules: this.rules,
      draft, width, src: this.status, previews: this.app.previews, motion: this.motion });
    if (fresh) this.app.displayed(cam);
    const stats = cam.delayStats();
    this.delay.textContent = stats
      ? `glass-to-display ${fmtMs(stats.median)} (P95 ${fmtMs(stats.p95)})` : "";
  }
}

function describe(e) {
  const who = e.track !== null && e.track !== undefined ? ` #${e.track} ${e.class ?? ""}` : "";
  switch (e.kind) {
    case "line_cross": return `${e.rule}: crossed ${e.dir}${who}`;
    case "zone_enter": return `${e.rule}: entered${who}`;
    case "zone_spawn": return `${e.rule}: appeared in${who}`;
    case "zone_exit": return `${e.rule}: left${who} after ${(e.dwell_s ?? 0).toFixed(1)} s`;
    case "zone_loiter": return `${e.rule}: loitering${who} ${(e.dwell_s ?? 0).toFixed(1)} s`;
    case "zone_occupancy": return `${e.rule}: occupancy ${e.count}`;
    case "camera_health": return `camera ${e.check} ${e.state}`;
    default: return e.kind;
  }
}

// The q-quantile of a Prometheus histogram in text format (linear within a bucket).
export function p99(text, name, q = 0.99) {
  const buckets = [];
  const re = new RegExp(`^${name}_bucket\\{le="([^"]+)"\\} ([0-9.e+-]+)$`, "gm");
  for (const m of text.matchAll(re)) buckets.push([m[1] === "+Inf" ? Infinity : Number(m[1]), Number(m[2])]);
  if (!buckets.length) return null;
  const total = buckets[buckets.length - 1][1];
  if (!total) return null;
  let prevLe = 0;
  let prevCount = 0;
  for (const [le, count] of buckets) {
    if (count >= q * total) {
      if (le === Infinity) return prevLe;
      return prevLe + ((le - prevLe) * (q * total - prevCount)) / Math.max(1, count - prevCount);
    }
    prevLe = le;
    prevCount = count;
  }
  return null;
}
