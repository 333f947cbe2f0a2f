"""Session tokens (server/tokens.py): signed, short-lived, bound to a configured key, revocable,
and carried on the WebSocket as a subprotocol."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import DashboardConfig
from pipeline.types import VigilError
from server.auth import digest
from server.tokens import MAX_REVOKED, SessionTokens, load_secret, ws_token

KEY, OTHER = digest("a-key-of-sixteen-chars"), digest("another-key-of-sixteen")


def test_a_token_stands_for_its_key_until_it_expires() -> None:
    tokens = SessionTokens(b"s" * 32, 600, [KEY, OTHER])
    t = tokens.issue(KEY, now=1000.0)
    assert tokens.owner(t, now=1000.0) == KEY
    assert tokens.owner(t, now=1599.0) == KEY
    assert tokens.owner(t, now=1600.0) is None  # expired
    assert tokens.owner(tokens.issue(OTHER, now=1000.0), now=1001.0) == OTHER
    assert "a-key" not in t and KEY.hex() not in t  # names its key without revealing it
    with pytest.raises(ValueError):
        tokens.issue(digest("not-a-configured-key"))


def test_forged_altered_and_foreign_tokens_are_refused() -> None:
    tokens = SessionTokens(b"s" * 32, 600, [KEY])
    t = tokens.issue(KEY, now=1000.0)
    kid, expiry, nonce, mac = t.split(".")
    longer = f"{kid}.{int(expiry) + 86400}.{nonce}.{mac}"
    other_secret = SessionTokens(b"t" * 32, 600, [KEY]).issue(KEY, now=1000.0)
    for bad in (longer, other_secret, t + "x", t[:-1], "", "a.b.c.d", "x" * 1000, "....", None):
        assert tokens.owner(bad, now=1001.0) is None, bad


def test_the_same_secret_accepts_tokens_across_restarts_and_a_removed_key_ends_them() -> None:
    t = SessionTokens(b"s" * 32, 600, [KEY, OTHER]).issue(OTHER, now=1000.0)
    assert SessionTokens(b"s" * 32, 600, [KEY, OTHER]).owner(t, now=1001.0) == OTHER
    assert SessionTokens(b"s" * 32, 600, [KEY]).owner(t, now=1001.0) is None


def test_revocation_is_bounded() -> None:
    tokens = SessionTokens(b"s" * 32, 600, [KEY])
    t = tokens.issue(KEY, now=1000.0)
    assert tokens.revoke(t, now=1001.0) and tokens.owner(t, now=1002.0) is None
    assert not tokens.revoke("forged.1.2.3", now=1001.0)
    for i in range(MAX_REVOKED + 500):
        tokens.revoke(tokens.issue(KEY, now=2000.0 + i), now=2000.0 + i)
    assert len(tokens._revoked) <= MAX_REVOKED


def test_the_secret_file(tmp_path: Path) -> None:
    f = tmp_path / "secret"
    f.write_text("x" * 40 + "\nignored\n")
    assert load_secret(DashboardConfig(token_secret_file=str(f))) == b"x" * 40
    f.write_text("short\n")
    with pytest.raises(VigilError, match="at least 32"):
        load_secret(DashboardConfig(token_secret_file=str(f)))
    with pytest.raises(VigilError, match="cannot read"):
        load_secret(DashboardConfig(token_secret_file=str(tmp_path / "missing")))
    a, b = load_secret(DashboardConfig()), load_secret(DashboardConfig())
    assert len(a) == 32 and a != b


def test_the_websocket_subprotocol_header() -> None:
    assert ws_token("vigil.v1, vigil.token.abc.1.x.y") == ("abc.1.x.y", True)
    assert ws_token("vigil.token.abc") == ("abc", False)
    assert ws_token(None) == (None, False)
    assert ws_token("chat, superchat") == (None, False)
    assert ws_token("vigil.token." + "a" * 5000)[0] == "a" * 160
