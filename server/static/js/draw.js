// Drawing one camera on a canvas: the preview frame, then the rules, trails and boxes of the
// track message of the same frame (boxes are source pixels, scaled to the canvas).
const PALETTE = ["#ff3b30", "#34c759", "#0a84ff", "#ffcc00", "#af52de", "#ff9500", "#5ac8fa",
  "#ff2d55", "#a2845e", "#30d158"];

export function classColor(cls) {
  return PALETTE[((cls % PALETTE.length) + PALETTE.length) % PALETTE.length];
}

// Size the canvas to the frame's aspect at ``width`` pixels (its backing store, not CSS).
export function fitCanvas(canvas, srcW, srcH, width) {
  const w = Math.round(width);
  const h = Math.max(1, Math.round((w * srcH) / srcW));
  if (canvas.width !== w || canvas.height !== h) {
    canvas.width = w;
    canvas.height = h;
  }
}

// Returns the boxes drawn, in canvas pixels, with the frame they came from.
export function drawCamera(ctx, cam, opts) {
  const { classes, rules, draft, src } = opts;
  const canvas = ctx.canvas;
  const shown = cam.shown;
  const srcW = shown ? shown.header.src_width : src?.width || 16;
  const srcH = shown ? shown.header.src_height : src?.height || 9;
  fitCanvas(canvas, srcW, srcH, opts.width);
  const W = canvas.width;
  const H = canvas.height;
  const sx = W / srcW;
  const sy = H / srcH;
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, W, H);
  // without previews (a gateway), the newest message's boxes on black
  const msg = shown ? shown.tracks : opts.previews ? null : cam.latest;
  if (shown) ctx.drawImage(shown.bitmap, 0, 0, W, H);
  const motion = opts.motion ? drawMotion(ctx, opts.motion, W, H) : null;
  if (rules) drawRules(ctx, rules, W, H, cam.counts);
  if (draft) drawDraft(ctx, draft, W, H);
  const drawn = [];
  if (!msg) return { frame: shown?.header.frame ?? null, boxes: drawn, motion };
  ctx.lineWidth = 2;
  for (const trail of cam.trails.values()) {
    if (trail.points.length < 2 || cam.messages - trail.seen > 1) continue;
    ctx.strokeStyle = "rgba(255,255,255,0.55)";
    ctx.beginPath();
    trail.points.forEach(([x, y], i) => (i ? ctx.lineTo(x * sx, y * sy) : ctx.moveTo(x * sx, y * sy)));
    ctx.stroke();
  }
  ctx.font = "12px system-ui, sans-serif";
  ctx.textBaseline = "bottom";
  for (const [id, cls, conf, x1, y1, x2, y2] of msg.tracks) {
    const color = classColor(cls);
    const box = [Math.round(x1 * sx), Math.round(y1 * sy), Math.round(x2 * sx), Math.round(y2 * sy)];
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
    const label = `#${id} ${classes[cls] ?? cls} ${conf.toFixed(2)}`;
    const tw = ctx.measureText(label).width + 6;
    const ty = box[1] > 16 ? box[1] : box[1] + 16;
    ctx.fillStyle = color;
    ctx.fillRect(box[0] - 1, ty - 15, tw, 15);
    ctx.fillStyle = "#000";
    ctx.fillText(label, box[0] + 2, ty - 1);
    drawn.push({ id, cls, color, src: [x1, y1, x2, y2], box });
  }
  return { frame: msg.frame, boxes: drawn, motion };
}

function lineCount(counts, id) {
  const c = counts?.lines?.[id];
  if (!c) return "";
  const sum = (d) => Object.values(d || {}).reduce((a, b) => a + b, 0);
  return ` in ${sum(c.in)} out ${sum(c.out)}`;
}

function drawRules(ctx, rules, W, H, counts) {
  ctx.lineWidth = 2;
  ctx.font = "bold 13px system-ui, sans-serif";
  ctx.textBaseline = "middle";
  for (const z of rules.zones) {
    ctx.strokeStyle = "#ffd60a";
    ctx.fillStyle = "rgba(255,214,10,0.12)";
    ctx.beginPath();
    z.polygon.forEach(([x, y], i) => (i ? ctx.lineTo(x * W, y * H) : ctx.moveTo(x * W, y * H)));
    ctx.closePath();
    ctx.fill();
    ctx.stroke();
    const occ = Object.values(counts?.zones?.[z.id]?.occupancy || {}).reduce((a, b) => a + b, 0);
    label(ctx, `${z.id} (${occ})`, z.polygon[0][0] * W + 4, z.polygon[0][1] * H + 10, "#ffd60a");
  }
  for (const l of rules.lines) {
    const [[x1, y1], [x2, y2]] = l.points;
    const a = [x1 * W, y1 * H];
    const b = [x2 * W, y2 * H];
    ctx.strokeStyle = "#00e5ff";
    ctx.beginPath();
    ctx.moveTo(...a);
    ctx.lineTo(...b);
    ctx.stroke();
    arrow(ctx, a, b);
    // the label three quarters of the way to p2, clear of the arrow at the middle
    label(ctx, `${l.id}${lineCount(counts, l.id)}`, a[0] + (b[0] - a[0]) * 0.75 + 6,
      a[1] + (b[1] - a[1]) * 0.75, "#00e5ff");
  }
}

// The "in" side: a small arrow at the middle of the line pointing from side -1 to +1.
function arrow(ctx, a, b) {
  const mx = (a[0] + b[0]) / 2;
  const my = (a[1] + b[1]) / 2;
  const dx = b[0] - a[0];
  const dy = b[1] - a[1];
  const len = Math.hypot(dx, dy) || 1;
  const nx = -dy / len; // side +1 is where (p2-p1) x (a-p1) > 0: the normal (-dy, dx)
  const ny = dx / len;
  const ux = dx / len;
  const uy = dy / len;
  ctx.save();
  ctx.lineWidth = 3;
  ctx.beginPath();
  ctx.moveTo(mx - nx * 6, my - ny * 6);
  ctx.lineTo(mx + nx * 26, my + ny * 26);
  ctx.moveTo(mx + nx * 26, my + ny * 26);
  ctx.lineTo(mx + nx * 16 + ux * 8, my + ny * 16 + uy * 8);
  ctx.moveTo(mx + nx * 26, my + ny * 26);
  ctx.lineTo(mx + nx * 16 - ux * 8, my + ny * 16 - uy * 8);
  ctx.stroke();
  ctx.fillStyle = "#00e5ff";
  ctx.font = "bold 11px system-ui, sans-serif";
  ctx.fillText("in", mx + nx * 34 - 6, my + ny * 34);
  ctx.restore();
}

function label(ctx, text, x, y, color) {
  const w = ctx.measureText(text).width + 8;
  ctx.fillStyle = "rgba(0,0,0,0.65)";
  ctx.fillRect(x - 2, y - 9, w, 18);
  ctx.fillStyle = color;
  ctx.fillText(text, x + 2, y);
}

function drawDraft(ctx, draft, W, H) {
  if (!draft.points.length) return;
  ctx.strokeStyle = "#ff375f";
  ctx.setLineDash([6, 4]);
  ctx.lineWidth = 2;
  ctx.beginPath();
  const pts = draft.cursor ? [...draft.points, draft.cursor] : draft.points;
  pts.forEach(([x, y], i) => (i ? ctx.lineTo(x * W, y * H) : ctx.moveTo(x * W, y * H)));
  if (draft.kind === "zone" && !draft.cursor && pts.length > 2) ctx.closePath();
  ctx.stroke();
  ctx.setLineDash([]);
  for (const [x, y] of draft.points) {
    ctx.fillStyle = "#ff375f";
    ctx.fillRect(x * W - 3, y * H - 3, 6, 6);
  }
}

// The motion mask (GET /api/streams/{id}/motion): grid cells over the whole frame, "1" where
// the gate saw motion, tinted over the preview.
// Returns how many cells it tinted.
function drawMotion(ctx, motion, W, H) {
  let cells = 0;
  const [gh, gw] = motion.grid;
  const cw = W / gw;
  const ch = H / gh;
  ctx.fillStyle = "rgba(255, 214, 10, 0.35)";
  motion.rows.forEach((row, y) => {
    for (let x = 0; x < row.length; x += 1) {
      if (row[x] !== "1") continue;
      ctx.fillRect(x * cw, y * ch, Math.ceil(cw), Math.ceil(ch));
      cells += 1;
    }
  });
  return cells;
}
