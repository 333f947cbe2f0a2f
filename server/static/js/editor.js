// Drawing a line or a zone on the live frame with the mouse; coordinates are normalized to the
// frame (0..1), the rules' own format (analytics/rules.py).
export class Editor {
  constructor(canvas, onDone) {
    this.canvas = canvas;
    this.onDone = onDone; // (kind, points) when a shape is complete
    this.draft = null; // {kind, points: [[x, y]...], cursor}
    this._down = this._down.bind(this);
    this._move = this._move.bind(this);
    this._up = this._up.bind(this);
    this._dbl = this._dbl.bind(this);
    canvas.addEventListener("pointerdown", this._down);
    canvas.addEventListener("pointermove", this._move);
    canvas.addEventListener("pointerup", this._up);
    canvas.addEventListener("dblclick", this._dbl);
  }

  start(kind) {
    this.draft = { kind, points: [], cursor: null };
    this.canvas.classList.add("editing");
  }

  cancel() {
    this.draft = null;
    this.canvas.classList.remove("editing");
  }

  _pos(e) {
    const r = this.canvas.getBoundingClientRect();
    const clamp = (v) => Math.min(1, Math.max(0, v));
    return [clamp((e.clientX - r.left) / r.width), clamp((e.clientY - r.top) / r.height)].map(
      (v) => Math.round(v * 10000) / 10000);
  }

  _down(e) {
    if (!this.draft) return;
    e.preventDefault();
    const p = this._pos(e);
    const d = this.draft;
    if (d.kind === "line") {
      if (d.points.length === 1 && d.waiting && !this._near(p, d.points[0])) {
        d.points.push(p); // click, click
        this._finish();
        return;
      }
      d.points = [p];
      d.waiting = false;
      d.cursor = p;
      this.canvas.setPointerCapture(e.pointerId);
      return;
    }
    // a zone: click the corners; click the first one again (or double-click) to close it
    if (d.points.length >= 3 && this._near(p, d.points[0])) {
      this._finish();
      return;
    }
    if (d.points.length < 64) d.points.push(p);
  }

  _move(e) {
    if (!this.draft || !this.draft.points.length) return;
    this.draft.cursor = this._pos(e);
  }

  _up(e) {
    const d = this.draft;
    if (!d || d.kind !== "line" || d.points.length !== 1) return;
    const p = this._pos(e);
    if (this._near(p, d.points[0])) {
      d.waiting = true; // a click, not a drag: the second click ends the line
      return;
    }
    d.points.push(p);
    this._finish();
  }

  _dbl(e) {
    const d = this.draft;
    if (!d || d.kind !== "zone") return;
    e.preventDefault();
    if (d.points.length >= 3) this._finish();
  }

  _near(a, b) {
    const r = this.canvas.getBoundingClientRect();
    return Math.hypot((a[0] - b[0]) * r.width, (a[1] - b[1]) * r.height) < 8;
  }

  _finish() {
    const d = this.draft;
    d.cursor = null;
    this.canvas.classList.remove("editing");
    this.onDone(d.kind, d.points.slice());
  }
}
