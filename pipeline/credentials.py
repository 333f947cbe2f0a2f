"""Credentials in stream URLs: find them, keep them out of every text Vigil shows.

A camera URL may carry secrets in its userinfo (``rtsp://user:pass@host/...``) and in query
parameters (``?token=...``, ``&password=...``, signed-URL signatures). Three views of a URL:

- :func:`redact` (logs, errors, ``last_error``): userinfo -> ``***`` and the values of
  well-known secret query parameters -> ``***``; works on any text that contains URLs.
- :func:`public_url` (API output, by default): userinfo -> ``***`` and *every* query value ->
  ``***`` (parameter names stay, so a user can still tell two URLs apart).
- :func:`url_secrets` + :func:`scrub`: the literal secret strings of one URL (raw and
  percent-decoded), removed from any text, e.g. an FFmpeg log line that quotes the password
  without the URL around it.

:func:`has_secrets` tells the decoder to hand the URL to FFmpeg through a pipe instead of its
command line (pipeline/sources.py), where any local user could read it with ``ps``.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, urlsplit

MASK = "***"
# Query parameter names (lower case) whose values are secrets wherever they appear.
SECRET_PARAMS = frozenset(
    {
        "token", "access_token", "auth", "auth_token", "authorization", "key", "api_key",
        "apikey", "password", "passwd", "pass", "pwd", "secret", "client_secret", "signature",
        "sig", "session", "sessionid", "credential", "credentials", "x-amz-signature",
        "x-amz-credential", "x-amz-security-token", "jwt", "hash",
    }
)  # fmt: skip
_SCHEMES = r"(?:rtsps?|rtmps?|https?|srt|udp|tcp|tls|rtp)"
# scheme://userinfo@ ; userinfo runs to the last '@' before the path (passwords may hold '@')
_USERINFO = re.compile(rf"(\b{_SCHEMES}://)[^/\s?#]*@", re.IGNORECASE)
_URL = re.compile(rf"\b{_SCHEMES}://[^\s'\"<>]+", re.IGNORECASE)
_QUERY_PAIR = re.compile(r"([?&;])([^=&;#\s]*)=([^&;#\s]*)")


def _mask_query(url: str, every: bool) -> str:
    def repl(m: re.Match[str]) -> str:
        name = unquote(m.group(2)).lower()
        if every or name in SECRET_PARAMS:
            return f"{m.group(1)}{m.group(2)}={MASK}"
        return m.group(0)

    head, sep, query = url.partition("?")
    if not sep:
        return url
    return head + _QUERY_PAIR.sub(repl, "?" + query)


def redact(text: str) -> str:
    """Every URL in ``text`` with its userinfo and secret query values replaced by ``***``."""
    text = _USERINFO.sub(rf"\1{MASK}@", text)
    return _URL.sub(lambda m: _mask_query(m.group(0), every=False), text)


def public_url(url: str, mask_query: bool = True) -> str:
    """``url`` as the API shows it: no userinfo, and (``mask_query``) no query values at all."""
    url = _USERINFO.sub(rf"\1{MASK}@", url)
    return _mask_query(url, every=mask_query) if _URL.match(url) else url


def url_secrets(url: str) -> list[str]:
    """The secret strings in ``url`` (password, user, secret query values), raw and decoded,
    longest first; strings shorter than 3 characters are left out (they would scrub noise)."""
    found: set[str] = set()
    m = re.match(rf"{_SCHEMES}://([^/\s?#]*)@", url, re.IGNORECASE)
    if m:
        user, _, password = m.group(1).partition(":")
        found.update(filter(None, (user, password)))
    try:
        query = urlsplit(url).query
    except ValueError:
        query = url.partition("?")[2]
    for name, value in parse_qsl(query, keep_blank_values=False):
        if name.lower() in SECRET_PARAMS:
            found.add(value)
    for m2 in _QUERY_PAIR.finditer(url):
        if unquote(m2.group(2)).lower() in SECRET_PARAMS:
            found.add(m2.group(3))
    found |= {unquote(s) for s in found}
    return sorted((s for s in found if len(s) >= 3), key=len, reverse=True)


def has_secrets(url: str) -> bool:
    """True if ``url`` carries userinfo or a secret query parameter."""
    return bool(_USERINFO.match(url)) or redact(url) != url


def scrub(text: str, secrets: list[str]) -> str:
    """``text`` with every URL redacted and each literal secret replaced by ``***``."""
    text = redact(text)
    for s in secrets:
        text = text.replace(s, MASK)
    return text
