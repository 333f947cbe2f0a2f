"""Hypothesis strategies for outside input, and the one check every parser of it must pass.

Any parser of what a user, a client or a file hands Vigil joins the property suite with
:func:`assert_refuses_cleanly` and the strategies here:

- :func:`hostile_text` / :func:`hostile_json_text`: text and JSON-ish text a client could send
  (control characters, 5000-digit numbers, nesting thousands deep, truncated documents);
- :func:`json_values`: any JSON document, nested;
- :func:`dataclass_mappings`: mappings for a config-style dataclass (bounds in field metadata:
  ``range``, ``choices``, ``pattern``, ``items``, ``required``), mostly valid with every kind of
  wrong value mixed in. New schemas (analytics rules, event queries, sink settings) get
  strategies for free by declaring their bounds the same way;
- :func:`stream_urls` / :func:`secret_urls`: URLs of every scheme, and URLs whose secrets are
  known so a test can check none survives redaction;
- :func:`pickle_programs`: opcode streams that reference dangerous callables.
"""

from __future__ import annotations

import math
import pickle
import re
import string
from collections.abc import Callable
from dataclasses import MISSING, fields, is_dataclass
from typing import Any

from hypothesis import strategies as st

from pipeline.types import VigilError

# ------------------------------------------------------------------------------- the check


def assert_refuses_cleanly(
    parse: Callable[[Any], Any], value: Any, errors: tuple[type[BaseException], ...] = ()
) -> Any:
    """Call ``parse(value)``: it must return, or raise :class:`VigilError` (or one of
    ``errors``) whose message is one non-empty line. Anything else escapes as a failure."""
    try:
        return parse(value)
    except (VigilError, *errors) as e:
        message = str(e)
        assert message.strip(), f"empty refusal for {value!r}"
        assert "\n" not in message, f"refusal is not one line: {message!r}"
        assert "Traceback" not in message
        return None


# --------------------------------------------------------------------------------- text/JSON

CONTROL = "".join(chr(c) for c in [*range(0, 32), 127, 0x85, 0x9F])


def hostile_text(max_size: int = 200) -> st.SearchStrategy[str]:
    """Unicode text biased towards control characters, quotes and URL punctuation."""
    alphabet = st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(CONTROL + "\t '\"\\%@:/?#&=[]{}.;|$`*~"),
    )
    return st.text(alphabet, max_size=max_size)


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    hostile_text(40),
)


def json_values(max_leaves: int = 30) -> st.SearchStrategy[Any]:
    return st.recursive(
        json_scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=6), st.dictionaries(hostile_text(12), inner, max_size=6)
        ),
        max_leaves=max_leaves,
    )


@st.composite
def hostile_json_text(draw: st.DrawFn, max_nesting: int = 3000) -> str:
    """Text for a JSON parser: valid documents, documents with the values a parser chokes on
    (5000-digit numbers, nesting ``max_nesting`` deep, NaN), truncations, and plain text."""
    import json

    kind = draw(st.sampled_from(["json", "deep", "digits", "truncated", "text", "nan"]))
    if kind == "json":
        return json.dumps(draw(json_values()))
    if kind == "deep":
        n = draw(st.integers(1, max_nesting))
        opener = draw(st.sampled_from(["[", '{"a":']))
        closer = "]" if opener == "[" else "}"
        return opener * n + "1" + closer * n
    if kind == "digits":
        digits = "9" * draw(st.integers(4000, 6000))
        return draw(st.sampled_from([digits, f'{{"op":"subscribe","last_seq":{{"a":{digits}}}}}']))
    if kind == "truncated":
        doc = json.dumps(draw(json_values()))
        return doc[: draw(st.integers(0, len(doc)))]
    if kind == "nan":
        return draw(st.sampled_from(["NaN", "[Infinity]", '{"op": NaN}', "-Infinity"]))
    return draw(hostile_text())


# ------------------------------------------------------------------ config-style dataclasses


def _wrong_values() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**30), max_value=10**30),
        st.floats(allow_nan=True, allow_infinity=True),
        hostile_text(30),
        st.lists(st.integers(), max_size=3),
        st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    )


def _valid_value(f: Any, default: Any) -> st.SearchStrategy[Any]:
    meta = f.metadata
    if "choices" in meta:
        return st.sampled_from(list(meta["choices"]))
    if "pattern" in meta:
        return st.from_regex(re.compile(meta["pattern"]), fullmatch=True)
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        lo, hi = meta.get("range", (-(10**6), 10**6))
        return st.integers(math.ceil(lo), math.floor(hi))
    if isinstance(default, float):
        lo, hi = meta.get("range", (-1e6, 1e6))
        return st.floats(lo, hi, allow_nan=False)
    if isinstance(default, tuple):
        return st.lists(st.text(string.ascii_letters, min_size=1, max_size=8), max_size=3)
    if isinstance(default, str):
        return st.text(max_size=int(meta.get("max_length", 40)))
    return st.none()


@st.composite
def dataclass_mappings(draw: st.DrawFn, cls: type, wrong: float = 0.15, depth: int = 0) -> Any:
    """A mapping for ``cls``: each field absent, valid (within its metadata bounds) or, with
    probability about ``wrong``, a value of the wrong kind or out of range; sometimes an
    unknown key, sometimes not a mapping at all."""
    if draw(st.floats(0, 1)) < wrong / 4:
        return draw(_wrong_values())
    out: dict[Any, Any] = {}
    instance = cls()
    for f in fields(cls):
        required = bool(f.metadata.get("required"))
        if not required and draw(st.booleans()):
            continue
        default = getattr(instance, f.name)
        if draw(st.floats(0, 1)) < wrong:
            out[f.name] = draw(_wrong_values())
        elif is_dataclass(default) and depth < 3:
            out[f.name] = draw(dataclass_mappings(type(default), wrong, depth + 1))
        elif "items" in f.metadata and depth < 3:
            out[f.name] = draw(
                st.lists(dataclass_mappings(f.metadata["items"], wrong, depth + 1), max_size=3)
            )
        elif f.default is MISSING and f.default_factory is MISSING:
            out[f.name] = draw(_wrong_values())
        else:
            out[f.name] = draw(_valid_value(f, default))
    if draw(st.floats(0, 1)) < wrong / 2:
        out[draw(hostile_text(12))] = draw(json_scalars)
    return out


# ---------------------------------------------------------------------------------------- URLs

_SECRET_ALPHABET = string.ascii_letters + string.digits + "!$&'()*+,;=-._~%@:"


@st.composite
def secret_urls(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A network URL with credentials in userinfo and/or a secret query parameter, and the
    secret values it holds (each distinctive: a fixed prefix and at least 6 characters)."""
    from pipeline.credentials import SECRET_PARAMS

    scheme = draw(st.sampled_from(["rtsp", "rtsps", "http", "https", "RTSP"]))
    host = draw(st.sampled_from(["10.0.0.7", "cam.local", "[fe80::1]", "127.0.0.1"]))
    port = draw(st.sampled_from(["", ":554", ":8554"]))
    secrets: list[str] = []
    userinfo = ""
    if draw(st.booleans()):
        user = draw(st.text(string.ascii_letters, min_size=1, max_size=8))
        password = "Zq" + draw(st.text(_SECRET_ALPHABET.replace("%", ""), min_size=4, max_size=16))
        password = password.replace("/", "").replace("?", "").replace("#", "")
        userinfo = f"{user}:{password}@"
        secrets.append(password)
    params = []
    if draw(st.booleans()) or not secrets:
        name = draw(st.sampled_from(sorted(SECRET_PARAMS)))
        value = "Zk" + draw(
            st.text(string.ascii_letters + string.digits + "-_.~", min_size=4, max_size=20)
        )
        params.append(f"{draw(st.sampled_from([name, name.upper()]))}={value}")
        secrets.append(value)
    params += draw(
        st.lists(st.sampled_from(["channel=1", "subtype=0", "profile=main"]), max_size=2)
    )
    order = draw(st.permutations(params))
    path = draw(st.sampled_from(["/stream1", "/cam/live", "/", "/a%20b"]))
    query = ("?" + "&".join(order)) if order else ""
    return f"{scheme}://{userinfo}{host}{port}{path}{query}", secrets


def stream_urls() -> st.SearchStrategy[str]:
    """Anything a client could put in a stream's ``url``."""
    schemes = st.sampled_from(
        ["rtsp", "rtsps", "http", "https", "file", "concat", "subfile", "data", "pipe", "RTSP",
         "ftp", "tcp", "udp", "async", "crypto"]
    )  # fmt: skip
    structured = st.builds(
        lambda s, auth, host, port, path, q: f"{s}://{auth}{host}{port}{path}{q}",
        schemes,
        st.sampled_from(["", "u:p@", "@", "a:b:c@", "us%40er:pa%3Ass@"]),
        st.one_of(
            st.sampled_from(["", "127.0.0.1", "cam.local", "[::1]", "10.0.0.1"]), hostile_text(20)
        ),
        st.sampled_from(["", ":554", ":0", ":99999", ":x", ":-1"]),
        st.one_of(st.sampled_from(["/s", "/../../etc/passwd", "/a b"]), hostile_text(20)),
        st.sampled_from(["", "?token=abc", "?a=1&b=2", "?%00"]),
    )
    paths = st.one_of(
        st.sampled_from(["clip.mp4", "../x.mp4", "/etc/passwd", "a/../../b", ".", "", "~"]),
        hostile_text(60),
    )
    return st.one_of(structured, paths, secret_urls().map(lambda t: t[0]))


# ------------------------------------------------------------------------------------ pickles

DANGEROUS_GLOBALS = [
    ("os", "system"),
    ("posix", "system"),
    ("builtins", "eval"),
    ("builtins", "exec"),
    ("builtins", "getattr"),
    ("builtins", "__import__"),
    ("subprocess", "Popen"),
    ("tests.strategies", "tripwire"),
    ("torch", "load"),
    ("torch.serialization", "load"),
    ("shutil", "rmtree"),
]
ALLOWED_GLOBALS = [
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch", "Size"),
    ("models.common", "Conv"),
    ("torch.nn.modules.conv", "Conv2d"),
    ("builtins", "set"),
]
TRIPPED: list[Any] = []


def tripwire(*args: Any, **kwargs: Any) -> None:
    """A callable a malicious pickle might name; calling it records the call."""
    TRIPPED.append((args, kwargs))


@st.composite
def pickle_programs(draw: st.DrawFn, command: str = "true") -> bytes:
    """A pickle opcode stream: globals (dangerous and allowed), strings, ints, containers,
    calls (REDUCE, NEWOBJ, OBJ, INST, BUILD), memo traffic, in any order, usually ending in
    STOP. ``command`` is the string dangerous calls receive (e.g. ``touch MARKER``)."""

    def s(text: str) -> bytes:
        raw = text.encode()
        return pickle.SHORT_BINUNICODE + bytes([len(raw)]) + raw

    def glob(module: str, name: str) -> bytes:
        return pickle.GLOBAL + f"{module}\n{name}\n".encode()

    pieces = [pickle.PROTO + b"\x02"]
    atoms = st.one_of(
        st.sampled_from(DANGEROUS_GLOBALS + ALLOWED_GLOBALS).map(lambda g: glob(*g)),
        st.sampled_from(DANGEROUS_GLOBALS + ALLOWED_GLOBALS).map(
            lambda g: s(g[0]) + s(g[1]) + pickle.STACK_GLOBAL
        ),
        st.sampled_from(DANGEROUS_GLOBALS).map(
            lambda g: glob(*g) + pickle.MARK + s(command) + pickle.TUPLE + pickle.REDUCE
        ),
        st.sampled_from(DANGEROUS_GLOBALS).map(
            lambda g: pickle.MARK + s(command) + pickle.INST + f"{g[0]}\n{g[1]}\n".encode()
        ),
        st.just(s(command)),
        st.integers(0, 255).map(lambda i: pickle.BININT1 + bytes([i])),
        st.sampled_from(
            [
                pickle.MARK,
                pickle.TUPLE,
                pickle.TUPLE1,
                pickle.TUPLE2,
                pickle.EMPTY_TUPLE,
                pickle.EMPTY_DICT,
                pickle.EMPTY_LIST,
                pickle.REDUCE,
                pickle.BUILD,
                pickle.NEWOBJ,
                pickle.OBJ,
                pickle.SETITEM,
                pickle.SETITEMS,
                pickle.APPEND,
                pickle.APPENDS,
                pickle.POP,
                pickle.DUP,
                pickle.NONE,
                pickle.NEWTRUE,
                pickle.BINPUT + b"\x00",
                pickle.BINGET + b"\x00",
                pickle.LONG1 + b"\x01\x05",
                pickle.EMPTY_SET,
            ]
        ),
        st.binary(max_size=8),
    )
    pieces += draw(st.lists(atoms, max_size=30))
    if draw(st.integers(0, 9)):
        pieces.append(pickle.STOP)
    return b"".join(pieces)
