// The live state of every camera, fed by one WebSocket (README "Dashboard"): v1 track and event
// messages, binary preview frames, counts. Everything kept here is capped, so a page left open
// for days holds the same memory as after a minute.
const TRACK_RING = 64; // track messages kept per stream, by frame index (to pair with previews)
const TRAIL_POINTS = 24; // points per track trail
const TRAIL_TRACKS = 256; // trails per stream
const TRAIL_STALE = 50; // messages a track may miss before its trail is dropped
const DELAYS = 512; // delay samples per stream
const EVENTS = 200; // live events kept per stream
const MAX_STREAMS = 256;

export class CameraState {
  constructor(id) {
    this.id = id;
    this.ring = new Map(); // frame index -> track message
    this.latest = null; // newest track message
    this.trails = new Map(); // track id -> {points: [[x, y]...], seen: message count}
    this.messages = 0;
    this.preview = null; // {header, bitmap}: newest decoded preview
    this.shown = null; // {header, bitmap, tracks} being displayed
    this.decoding = false;
    this.pendingBytes = null;
    this.delays = new Float64Array(DELAYS);
    this.delayCount = 0;
    this.drawnFrames = 0;
    this.events = [];
    this.counts = null;
    this.version = 0; // bumped on every change a view may draw
  }

  addTracks(msg) {
    this.latest = msg;
    this.ring.set(msg.frame, msg);
    while (this.ring.size > TRACK_RING) this.ring.delete(this.ring.keys().next().value);
    this.messages += 1;
    for (const t of msg.tracks) {
      const [id, , , x1, , x2, y2] = t;
      let trail = this.trails.get(id);
      if (!trail) {
        trail = { points: [], seen: 0 };
        this.trails.set(id, trail);
      }
      trail.seen = this.messages;
      trail.points.push([(x1 + x2) / 2, y2]);
      if (trail.points.length > TRAIL_POINTS) trail.points.shift();
    }
    if (this.messages % 10 === 0 || this.trails.size > TRAIL_TRACKS) {
      for (const [id, trail] of this.trails) {
        if (this.messages - trail.seen > TRAIL_STALE) this.trails.delete(id);
      }
      while (this.trails.size > TRAIL_TRACKS) this.trails.delete(this.trails.keys().next().value);
    }
    this.version += 1;
  }

  addEvent(e) {
    this.events.unshift(e);
    if (this.events.length > EVENTS) this.events.length = EVENTS;
    this.version += 1;
  }

  // The frame to display: the newest preview whose track message has come (boxes are drawn
  // from the message of the same frame), or, after 0.5 s without one, the preview alone.
  pick(now) {
    const p = this.preview;
    if (!p || (this.shown && this.shown.header.frame === p.header.frame)) return false;
    const tracks = this.ring.get(p.header.frame);
    if (!tracks && now - p.received < 500) return false;
    if (this.shown && this.shown.bitmap !== p.bitmap) this.shown.bitmap.close();
    this.shown = { header: p.header, bitmap: p.bitmap, tracks: tracks || null, drawnAt: 0 };
    return true;
  }

  recordDelay(seconds) {
    this.delays[this.delayCount % DELAYS] = seconds;
    this.delayCount += 1;
  }

  delayStats() {
    const n = Math.min(this.delayCount, DELAYS);
    if (!n) return null;
    const sorted = Array.from(this.delays.subarray(0, n)).sort((a, b) => a - b);
    const at = (q) => sorted[Math.min(n - 1, Math.floor(q * n))];
    return { count: this.delayCount, median: at(0.5), p95: at(0.95) };
  }
}

export class Live {
  constructor(api) {
    this.api = api;
    this.cameras = new Map();
    this.lastSeq = {};
    this.watched = new Set();
    this.previews = true; // the server sends previews (GET /api/session)
    this.state = "connecting";
    this.clockOffset = 0; // server unix time minus Date.now()/1000
    this._bestRtt = Infinity;
    this._backoff = 500;
    this._ws = null;
    this._opened = false;
    this._timers = [];
    this.onState = () => {};
    this.onEvent = () => {};
    this.onAuthFailed = () => {};
    this.onError = () => {};
  }

  camera(id) {
    let c = this.cameras.get(id);
    if (!c) {
      if (this.cameras.size >= MAX_STREAMS) this.cameras.delete(this.cameras.keys().next().value);
      c = new CameraState(id);
      this.cameras.set(id, c);
    }
    return c;
  }

  forget(id) {
    const c = this.cameras.get(id);
    if (c?.shown) c.shown.bitmap.close();
    this.cameras.delete(id);
    delete this.lastSeq[id];
  }

  serverNow() {
    return Date.now() / 1000 + this.clockOffset;
  }

  watch(ids) {
    if (!this.previews) return; // a gateway: boxes on a blank frame
    const next = new Set(ids);
    if (next.size === this.watched.size && [...next].every((id) => this.watched.has(id))) return;
    this.watched = next;
    this._send({ op: "preview", streams: [...this.watched] });
  }

  start() {
    this._stopped = false;
    this._connect();
    this._timers.push(setInterval(() => this._send({ op: "counts" }), 1000));
    this._timers.push(setInterval(() => this._syncClock(), 30000));
  }

  stop() {
    this._stopped = true;
    this._timers.forEach(clearInterval);
    this._timers = [];
    if (this._ws) {
      this._ws.onclose = null;
      this._ws.close();
    }
  }

  _setState(state) {
    this.state = state;
    this.onState(state);
  }

  _connect() {
    if (this._stopped) return;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const protocols = ["vigil.v1"];
    if (this.api.token) protocols.push(`vigil.token.${this.api.token}`);
    const ws = new WebSocket(`${scheme}://${location.host}/ws`, protocols);
    ws.binaryType = "arraybuffer";
    this._ws = ws;
    this._opened = false;
    ws.onopen = () => {
      this._opened = true;
      this._backoff = 500;
      this._setState("live");
      this._send({ op: "subscribe", last_seq: this.lastSeq });
      if (this.watched.size) this._send({ op: "preview", streams: [...this.watched] });
      this._bestRtt = Infinity;
      this._syncClock();
      setTimeout(() => this._syncClock(), 300);
      setTimeout(() => this._syncClock(), 900);
    };
    ws.onmessage = (m) => this._receive(m.data);
    ws.onclose = (ev) => {
      this._ws = null;
      if (this._stopped) return;
      this._setState("reconnecting");
      if (!this._opened && this.api.info?.auth) {
        // The handshake was refused: the token may have ended (or the server restarted).
        this.api.renew().then((r) => (r === "refused" ? this.onAuthFailed() : this._retry()));
        return;
      }
      if (ev.code === 1008 || ev.code === 1013) this.onError(ev.reason || `closed (${ev.code})`);
      this._retry();
    };
  }

  _retry() {
    if (this._stopped) return;
    const wait = this._backoff * (0.75 + Math.random() / 2);
    this._backoff = Math.min(5000, this._backoff * 2);
    setTimeout(() => this._connect(), wait);
  }

  _send(obj) {
    if (this._ws && this._ws.readyState === WebSocket.OPEN) this._ws.send(JSON.stringify(obj));
  }

  _syncClock() {
    this._clockSent = Date.now();
    this._send({ op: "clock" });
  }

  _receive(data) {
    if (data instanceof ArrayBuffer) {
      this._preview(data);
      return;
    }
    const msg = JSON.parse(data);
    if (msg.v === 1 && msg.type === "event") {
      this.camera(msg.stream).addEvent(msg);
      this.onEvent(msg);
    } else if (msg.v === 1 && Array.isArray(msg.tracks)) {
      this.lastSeq[msg.stream] = msg.seq;
      this.camera(msg.stream).addTracks(msg);
    } else if (msg.op === "counts") {
      for (const [id, counts] of Object.entries(msg.counts)) {
        const c = this.camera(id);
        c.counts = counts;
        c.version += 1;
      }
    } else if (msg.op === "clock") {
      const now = Date.now();
      const rtt = now - this._clockSent;
      if (rtt <= this._bestRtt) {
        this._bestRtt = rtt;
        this.clockOffset = msg.ts - (this._clockSent + rtt / 2) / 1000;
      }
    } else if (msg.op === "error") {
      this.onError(msg.error);
    }
  }

  _preview(buf) {
    const n = new DataView(buf).getUint32(0);
    const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, n)));
    if (!this.watched.has(header.stream)) return;
    const c = this.camera(header.stream);
    const item = { header, bytes: new Uint8Array(buf, 4 + n), received: performance.now() };
    if (c.decoding) {
      c.pendingBytes = item; // latest only: a newer frame replaces one waiting to be decoded
      return;
    }
    this._decode(c, item);
  }

  _decode(c, item) {
    c.decoding = true;
    createImageBitmap(new Blob([item.bytes], { type: "image/jpeg" }))
      .then((bitmap) => {
        const old = c.preview;
        if (old && (!c.shown || c.shown.bitmap !== old.bitmap)) old.bitmap.close();
        c.preview = { header: item.header, bitmap, received: item.received };
        c.version += 1;
      })
      .catch(() => {})
      .finally(() => {
        c.decoding = false;
        const next = c.pendingBytes;
        c.pendingBytes = null;
        if (next) this._decode(c, next);
      });
  }

  stats() {
    const out = {};
    for (const [id, c] of this.cameras) {
      out[id] = { ...c.delayStats(), drawn: c.drawnFrames, messages: c.messages,
        frame: c.shown?.header.frame ?? null };
    }
    return out;
  }
}
