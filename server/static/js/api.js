// REST with the session token. The API key is sent once (POST /api/session) and never kept;
// the short-lived token lives in sessionStorage (this tab only, never in a URL) and is renewed
// before it ends.
const TOKEN_KEY = "vigil.session";

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

export class Api {
  constructor() {
    this.token = null;
    this.expires = 0;
    this.info = null;
    this.onSignedOut = () => {};
    this._renewTimer = null;
    try {
      const saved = JSON.parse(sessionStorage.getItem(TOKEN_KEY) || "null");
      if (saved && saved.expires > Date.now() + 5000) {
        this.token = saved.token;
        this.expires = saved.expires;
        this._scheduleRenew();
      }
    } catch {
      sessionStorage.removeItem(TOKEN_KEY);
    }
  }

  get signedIn() {
    return !this.info?.auth || (this.token !== null && this.expires > Date.now());
  }

  async sessionInfo() {
    this.info = await this.request("GET", "/api/session");
    return this.info;
  }

  // Trade the API key for a session token; the key goes no further than this request.
  async signIn(key) {
    const body = await this._fetch("POST", "/api/session", undefined, { "X-API-Key": key });
    this._keep(body);
  }

  // "ok", "refused" (the token is no longer accepted: signed out) or "unreachable".
  async renew() {
    if (!this.token) return "refused";
    try {
      this._keep(await this.request("POST", "/api/session"));
      return "ok";
    } catch (e) {
      if (e.status === 401 || e.status === 403) return "refused"; // request() signed out
      this._renewTimer = setTimeout(() => this.renew(), 5000);
      return "unreachable";
    }
  }

  async signOut(tell = true) {
    const token = this.token;
    this.token = null;
    this.expires = 0;
    sessionStorage.removeItem(TOKEN_KEY);
    clearTimeout(this._renewTimer);
    if (tell && token) {
      await fetch("/api/session", { method: "DELETE",
        headers: { Authorization: `Bearer ${token}` } }).catch(() => {});
    }
    this.onSignedOut();
  }

  _keep(body) {
    if (!body.token) return;
    this.token = body.token;
    this.expires = Date.now() + body.expires_in * 1000;
    sessionStorage.setItem(TOKEN_KEY, JSON.stringify({ token: this.token, expires: this.expires }));
    this._scheduleRenew();
  }

  _scheduleRenew() {
    clearTimeout(this._renewTimer);
    const ms = Math.max(5000, (this.expires - Date.now()) / 2);
    this._renewTimer = setTimeout(() => this.renew(), ms);
  }

  async request(method, path, body) {
    const headers = this.token ? { Authorization: `Bearer ${this.token}` } : {};
    try {
      return await this._fetch(method, path, body, headers);
    } catch (e) {
      if ((e.status === 401 || e.status === 403) && this.info?.auth) this.signOut(false);
      throw e;
    }
  }

  async _fetch(method, path, body, headers) {
    const init = { method, headers: { ...headers } };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch {
      throw new ApiError(0, "the server cannot be reached");
    }
    const text = await res.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = text;
    }
    if (!res.ok) {
      const detail = data && typeof data === "object" && data.detail ? data.detail : `HTTP ${res.status}`;
      throw new ApiError(res.status, detail);
    }
    return data;
  }

  async metricsText() {
    const headers = this.token ? { Authorization: `Bearer ${this.token}` } : {};
    const res = await fetch("/metrics", { headers });
    return res.ok ? res.text() : "";
  }
}
