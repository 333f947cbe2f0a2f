// The dashboard's entry: sign-in (when the server wants a key), the one live connection, and
// the two views (#/ the grid, #/camera/<id> one camera), drawn at display rate.
import { Api } from "./api.js";
import { CameraView } from "./camera.js";
import { GridView } from "./grid.js";
import { Live } from "./live.js";

class App {
  constructor() {
    this.api = new Api();
    this.live = new Live(this.api);
    this.view = null;
    this.classes = [];
    this.previews = true;
    this.root = document.getElementById("view");
    this.conn = document.getElementById("conn");
    this.bannerEl = document.getElementById("banner");
    this.signoutBtn = document.getElementById("signout");
    this.started = false;
  }

  banner(text) {
    this.bannerEl.textContent = text;
    this.bannerEl.hidden = !text;
  }

  async boot() {
    let info;
    try {
      info = await this.api.sessionInfo();
    } catch (e) {
      this.banner(`Vigil cannot be reached: ${e.message}. Retrying…`);
      setTimeout(() => this.boot(), 2000);
      return;
    }
    this.banner("");
    this.classes = info.classes;
    this.previews = info.previews;
    this.live.previews = info.previews;
    this.api.onSignedOut = () => this.askKey("Your session ended: enter the API key again.");
    this.live.onAuthFailed = () => this.askKey("The server no longer accepts this session " +
      "(it restarted, or the token ended): enter the API key again.");
    this.live.onState = (s) => {
      this.conn.dataset.state = s;
      this.conn.textContent = s;
    };
    this.live.onError = (text) => this.banner(`Server: ${text}`);
    if (info.auth) {
      this.signoutBtn.hidden = false;
      this.signoutBtn.onclick = () => this.api.signOut();
    }
    if (info.auth && !this.api.signedIn) {
      this.askKey("");
      return;
    }
    this.start();
  }

  askKey(message) {
    const dialog = document.getElementById("login");
    const form = document.getElementById("login-form");
    const input = document.getElementById("login-key");
    const error = document.getElementById("login-error");
    error.textContent = message;
    this.live.stop();
    this.started = false;
    form.onsubmit = async (e) => {
      e.preventDefault();
      error.textContent = "";
      try {
        await this.api.signIn(input.value);
      } catch (err) {
        error.textContent = err.status === 403 || err.status === 401
          ? `Not signed in: ${err.message}.` : `Not signed in: ${err.message}`;
        input.select();
        return;
      }
      input.value = "";
      dialog.close();
      this.start();
    };
    if (!dialog.open) dialog.showModal();
    input.focus();
  }

  start() {
    if (this.started) return;
    this.started = true;
    this.live.start();
    if (!this.view) this.route();
  }

  route() {
    if (this.view) this.view.unmount();
    this.root.replaceChildren();
    const m = location.hash.match(/^#\/camera\/(.+)$/);
    this.view = m ? new CameraView(this, decodeURIComponent(m[1])) : new GridView(this);
    this.view.mount(this.root);
  }

  // A preview frame reached the screen: its glass-to-display delay, on the server's clock.
  displayed(cam) {
    const delay = this.live.serverNow() - cam.shown.header.ts;
    cam.recordDelay(delay);
    cam.drawnFrames += 1;
  }

  frame(now) {
    if (this.view && this.started) this.view.draw(now);
    requestAnimationFrame((t) => this.frame(t));
  }
}

const app = new App();
window.addEventListener("hashchange", () => app.route());
// For tests and the benchmark: per-camera delay statistics and what was drawn last.
window.vigil = {
  stats: () => app.live.stats(),
  drawn: () => {
    const v = app.view;
    if (!v) return null;
    if (v.drawnInfo) return { [v.id]: v.drawnInfo };
    const out = {};
    for (const [id, t] of v.tiles || []) out[id] = t.drawn;
    return out;
  },
};
app.boot();
requestAnimationFrame((t) => app.frame(t));
