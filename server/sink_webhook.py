"""The webhook sink: batches of events POSTed to a URL, signed, retried with backoff.

Body: ``{"v":1,"sent_at":<unix s>,"events":[<v1 event>, ...]}`` (``application/json``).
Header ``X-Vigil-Signature: sha256=<hex HMAC-SHA256 of the exact body bytes, keyed with the
configured secret>`` (absent without a secret). A 2xx answer delivers the batch; 408, 429, 5xx,
a timeout or a connection error is retried after a delay that doubles from
``backoff_initial_s`` to ``backoff_max_s`` (with jitter), the same events first; any other
answer (a 4xx: the receiver refuses the payload, or a redirect, which is never followed) drops
the batch, counted. Meanwhile new events buffer up to ``queue``, then the oldest are dropped
and counted. Delivery is at least once (a timeout after the receiver stored a batch repeats
it: receivers can use ``stream``+``seq`` to drop repeats). Log lines name the URL without its
query or credentials; the secret never appears anywhere.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from analytics.events import Event
from pipeline.config import WebhookConfig
from server.buffer import DropOldest
from server.sinks import SinkStats, read_secret, wanted

SIGNATURE_HEADER = "X-Vigil-Signature"
_RETRY_STATUS = {408, 429}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect becomes an HTTPError: a refusal


def redact_url(url: str) -> str:
    """``scheme://host[:port]/path``: no credentials, no query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def signature(secret: bytes, body: bytes) -> str:
    """The ``X-Vigil-Signature`` value for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class WebhookSink:
    def __init__(self, cfg: WebhookConfig, log: Callable[[str, str], None]) -> None:
        self.cfg = cfg
        self.name = f"webhook:{cfg.id}"
        self._log = log
        secret = read_secret(cfg.secret, cfg.secret_file, f"sinks.webhooks {cfg.id}: secret_file")
        self._secret = secret.encode()
        self._where = redact_url(cfg.url)
        self.buffer: DropOldest[bytes] = DropOldest(cfg.queue)
        self._stats = SinkStats()
        self._refused = 0
        self._stop = threading.Event()
        self._deadline = 0.0  # set by close(): how long retries may go on
        # no proxies from the environment, no redirects
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
        self._thread = threading.Thread(target=self._run, name=f"vigil-{self.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float) -> None:
        """Try to deliver what is buffered within ``timeout``, then stop."""
        self._deadline = time.monotonic() + timeout
        self._stop.set()
        self.buffer.close()
        self._thread.join(timeout)

    def stats(self) -> SinkStats:
        s = self._stats
        s.queue = len(self.buffer)
        s.dropped = self.buffer.dropped + self._refused
        return s

    def publish(self, events: Sequence[Event], data: Sequence[bytes]) -> None:
        pairs = wanted(events, data, self.cfg.kinds, self.cfg.streams)
        if pairs:
            self.buffer.put(d for _, d in pairs)

    # -- the sender thread -------------------------------------------------------------------
    def _run(self) -> None:
        delay = 0.0
        while True:
            batch = self._gather()
            if not batch:
                if self._stop.is_set():
                    return
                continue
            outcome = self._post([d for _, d in batch])
            if outcome != "retry":
                self.buffer.ack(batch[-1][0])
                if outcome == "refused":
                    self._refused += len(batch)
                delay = 0.0
                continue
            if self._stop.is_set() and time.monotonic() >= self._deadline:
                return
            delay = min(self.cfg.backoff_max_s, max(self.cfg.backoff_initial_s, delay * 2))
            self._stop.wait(delay * random.uniform(0.8, 1.2))

    def _gather(self) -> list[tuple[int, bytes]]:
        """A batch: wait for the first event, then up to ``batch_wait_s`` for a full one."""
        cfg = self.cfg
        first = self.buffer.peek(cfg.batch_size, 0.5)
        if not first or len(first) >= cfg.batch_size or self._stop.is_set():
            return first
        until = time.monotonic() + cfg.batch_wait_s
        while (left := until - time.monotonic()) > 0 and len(self.buffer) < cfg.batch_size:
            self.buffer.wait_for_more(len(self.buffer), left)
            if self._stop.is_set():
                break
        return self.buffer.peek(cfg.batch_size, 0.0)

    def _post(self, items: list[bytes]) -> str:
        """``sent``, ``refused`` (permanent) or ``retry``."""
        body = b'{"v":1,"sent_at":%.3f,"events":[' % time.time() + b",".join(items) + b"]}"
        request = urllib.request.Request(self.cfg.url, data=body, method="POST")
        request.add_header("Content-Type", "application/json")
        request.add_header("User-Agent", "vigil-webhook/1")
        if self._secret:
            request.add_header(SIGNATURE_HEADER, signature(self._secret, body))
        try:
            with self._opener.open(request, timeout=self.cfg.timeout_s) as response:
                response.read()
            self._stats.sent += len(items)
            self._stats.connected = True
            return "sent"
        except urllib.error.HTTPError as e:
            status = e.code
            e.close()
            what = f"HTTP {status}"
            permanent = 300 <= status < 500 and status not in _RETRY_STATUS
        except (OSError, ValueError) as e:  # URLError, timeouts, refused connections
            reason = getattr(e, "reason", e)
            what = f"{type(reason).__name__}: {reason}"[:200]
            permanent = False
        self._stats.errors += 1
        self._stats.connected = False
        self._stats.last_error = what
        action = "dropped" if permanent else "retrying"
        self._log(f"{self.name}:{what[:20]}", f"vigil: webhook {self.cfg.id} ({self._where}): "
                  f"{what}; {len(items)} events {action}")  # fmt: skip
        return "refused" if permanent else "retry"
