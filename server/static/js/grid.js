// The camera grid: the machine's capacity, one live tile per stream (inference fps, and the
// effective fps when quality of service lowered it), and the form that adds a camera.
import { CapacityPanel, effectiveFps } from "./capacity.js";
import { drawCamera } from "./draw.js";
import { el, fmtMs } from "./ui.js";

export class GridView {
  constructor(app) {
    this.app = app;
    this.tiles = new Map(); // stream id -> {fig, canvas, ctx, caption, version, status}
    this.timer = null;
  }

  mount(root) {
    this.grid = el("div", { class: "grid", id: "grid" });
    this.emptyNote = el("p", { class: "empty", text: "No cameras yet: add one below." });
    this.error = el("p", { class: "error", id: "add-error", role: "alert" });
    const id = el("input", { name: "id", placeholder: "id (e.g. door)", required: true, size: 12 });
    const url = el("input", { name: "url", placeholder: "rtsp://… or a file under media_root",
      required: true, size: 36 });
    const fps = el("input", { name: "fps", type: "number", min: "0.1", max: "120", step: "0.1",
      value: "10", size: 5, "aria-label": "fps" });
    const form = el("form", { class: "add", id: "add-camera", onsubmit: (e) => {
      e.preventDefault();
      this.add(id.value.trim(), url.value.trim(), Number(fps.value));
    } }, el("h3", { text: "Add a camera" }), id, url, fps,
    el("button", { type: "submit", text: "Add" }), this.error);
    this.capacity = new CapacityPanel(this.app.api);
    root.append(this.capacity.node, this.grid, this.emptyNote, form);
    this.refresh();
    this.timer = setInterval(() => this.refresh(), 2000);
  }

  unmount() {
    clearInterval(this.timer);
  }

  async add(id, url, fps) {
    this.error.textContent = "";
    try {
      await this.app.api.request("POST", "/api/streams", { id, url, fps });
      await this.refresh();
    } catch (e) {
      this.error.textContent = e.message;
    }
  }

  async remove(id) {
    if (!confirm(`Remove camera ${id}?`)) return;
    try {
      await this.app.api.request("DELETE", `/api/streams/${encodeURIComponent(id)}`);
      this.app.live.forget(id);
      await this.refresh();
    } catch (e) {
      this.app.banner(e.message);
    }
  }

  async refresh() {
    let streams;
    let qos;
    try {
      [streams, qos] = await Promise.all([this.app.api.request("GET", "/api/streams"),
        this.capacity.refresh()]);
    } catch (e) {
      if (e.status !== 401 && e.status !== 403) this.app.banner(e.message);
      return;
    }
    this.app.banner("");
    const ids = new Set(streams.map((s) => s.id));
    for (const [id, t] of this.tiles) {
      if (!ids.has(id)) {
        t.fig.remove();
        this.tiles.delete(id);
      }
    }
    for (const s of streams) {
      let t = this.tiles.get(s.id);
      if (!t) t = this.tile(s.id);
      t.status = s;
      t.state.textContent = s.state;
      t.state.className = `state-${s.state}`;
      t.fps.textContent = `${s.infer_fps.toFixed(1)} fps`;
      const eff = effectiveFps(qos[s.id]);
      t.qos.textContent = eff && eff.reduced ? `QoS ${eff.text}` : "";
      t.qos.title = eff ? `effective fps: ${eff.text}` : "";
    }
    this.emptyNote.hidden = streams.length > 0;
    this.app.live.watch([...ids]);
  }

  tile(id) {
    const canvas = el("canvas", { width: 640, height: 360, "aria-label": `camera ${id}` });
    const state = el("span");
    const fps = el("span");
    const qos = el("span", { class: "qos" });
    const delay = el("span", { class: "delay", title: "glass-to-display delay (median)" });
    const remove = el("button", { class: "remove", type: "button", title: "Remove camera",
      text: "✕", onclick: (e) => {
        e.stopPropagation();
        this.remove(id);
      } });
    const fig = el("figure", { class: "tile", dataset: { stream: id },
      onclick: () => (location.hash = `#/camera/${encodeURIComponent(id)}`) },
    canvas, el("figcaption", {}, el("span", { class: "name", text: id }), state, fps, qos, delay,
      remove));
    this.grid.append(fig);
    const t = { fig, canvas, ctx: canvas.getContext("2d"), state, fps, qos, delay, version: -1,
      status: null, drawn: null };
    this.tiles.set(id, t);
    return t;
  }

  draw(now) {
    for (const [id, t] of this.tiles) {
      const cam = this.app.live.camera(id);
      const fresh = cam.pick(now);
      if (!fresh && cam.version === t.version) continue;
      t.version = cam.version;
      const width = Math.min(960, Math.max(320, t.canvas.clientWidth * devicePixelRatio));
      t.drawn = drawCamera(t.ctx, cam, { classes: this.app.classes, width,
        src: t.status, previews: this.app.previews });
      if (fresh) this.app.displayed(cam);
      const stats = cam.delayStats();
      t.delay.textContent = stats ? `delay ${fmtMs(stats.median)}` : "";
    }
  }
}
