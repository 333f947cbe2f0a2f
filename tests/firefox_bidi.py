"""A minimal WebDriver BiDi client for Debian's Firefox ESR (``firefox-esr --headless
--remote-debugging-port``): Firefox speaks the W3C protocol itself, so no geckodriver and no
downloaded browser build. Enough to load a page, run script in it, and collect its console
errors and uncaught exceptions. Used by the dashboard's Firefox test."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect


class BiDiError(RuntimeError):
    pass


# The throwaway profile's preferences: nothing may leave loopback. Every connection that is not
# to localhost goes to a proxy on 127.0.0.1:9 where nothing listens (Firefox never proxies
# localhost), and the background services that would try are off.
PREFS = {
    "network.proxy.type": 1,
    "network.proxy.http": "127.0.0.1",
    "network.proxy.http_port": 9,
    "network.proxy.ssl": "127.0.0.1",
    "network.proxy.ssl_port": 9,
    "network.proxy.socks": "127.0.0.1",
    "network.proxy.socks_port": 9,
    "network.proxy.share_proxy_settings": True,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "network.dns.disablePrefetch": True,
    "network.prefetch-next": False,
    "app.update.enabled": False,
    "app.normandy.enabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.safebrowsing.update.enabled": False,
    "browser.region.update.enabled": False,
    "browser.search.update": False,
    "datareporting.healthreport.uploadEnabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.enabled": False,
    "toolkit.telemetry.unified": False,
    "dom.push.connection.enabled": False,
    "extensions.update.enabled": False,
    "extensions.getAddons.cache.enabled": False,
    "media.gmp-manager.url": "",
    "services.settings.server": "http://127.0.0.1:9/",
    "browser.newtabpage.enabled": False,
    "browser.startup.page": 0,
}


def _user_js(profile: Path) -> None:
    lines = [f"user_pref({json.dumps(k)}, {json.dumps(v)});" for k, v in PREFS.items()]
    (profile / "user.js").write_text("\n".join(lines) + "\n")


class Firefox:
    """One headless Firefox with its own throwaway profile; ``close()`` ends both."""

    def __init__(self, executable: str = "firefox-esr", start_timeout_s: float = 60.0) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.profile = Path(tempfile.mkdtemp(prefix="vigil-firefox-"))
        _user_js(self.profile)
        self.proc = subprocess.Popen(
            [executable, "--headless", "--no-remote", "--profile", str(self.profile),
             "--remote-debugging-port", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.errors: list[str] = []  # console errors and uncaught exceptions, as they come
        self._next = 0
        self._stack = contextlib.ExitStack()
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                url = f"ws://127.0.0.1:{port}/session"
                self.ws: ClientConnection = self._stack.enter_context(connect(url))
                break
            except OSError as e:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.close()
                    raise BiDiError(f"firefox did not open its BiDi port: {e}") from None
                time.sleep(0.2)
        self.call("session.new", {"capabilities": {}})
        self.call("session.subscribe", {"events": ["log.entryAdded"]})
        self.context = self.call("browsingContext.getTree", {})["contexts"][0]["context"]

    def call(self, method: str, params: dict[str, Any], timeout: float = 60.0) -> Any:
        """Send one command and return its result (events on the way are recorded)."""
        self._next += 1
        self.ws.send(json.dumps({"id": self._next, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if msg.get("type") == "event":
                self._event(msg)
            elif msg.get("id") == self._next:
                if msg.get("type") == "error":
                    raise BiDiError(f"{method}: {msg.get('error')}: {msg.get('message')}")
                return msg["result"]

    def _event(self, msg: dict[str, Any]) -> None:
        if msg.get("method") != "log.entryAdded":
            return
        entry = msg["params"]
        if entry.get("level") == "error" or entry.get("type") == "javascript":
            self.errors.append(str(entry.get("text")))

    def drain(self) -> bool:
        """Read the events sent so far (a no-op script's round trip); True."""
        self.evaluate("0")
        return True

    def navigate(self, url: str) -> None:
        self.call("browsingContext.navigate", {"context": self.context, "url": url,
                                               "wait": "complete"})  # fmt: skip

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited), as Python."""
        result = self.call("script.evaluate", {"expression": expression, "awaitPromise": True,
                                               "target": {"context": self.context}})  # fmt: skip
        if result.get("type") == "exception":
            details = result.get("exceptionDetails", {})
            raise BiDiError(f"script raised: {details.get('text')}")
        return _value(result["result"])

    def close(self) -> None:
        try:
            self._stack.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
            shutil.rmtree(self.profile, ignore_errors=True)


def _value(remote: dict[str, Any]) -> Any:
    """A BiDi serialized value (primitives, arrays, plain objects) as Python."""
    kind, value = remote.get("type"), remote.get("value")
    if kind in ("undefined", "null"):
        return None
    if kind == "number" and isinstance(value, str):  # NaN, Infinity, -0
        return float(value.replace("-0", "0")) if value != "NaN" else float("nan")
    if kind == "array":
        return [_value(v) for v in value or []]
    if kind == "object":
        return {(k if isinstance(k, str) else _value(k)): _value(v) for k, v in value or []}
    return value
