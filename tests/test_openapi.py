"""The OpenAPI description is true: schemathesis fuzzes a real `vigil serve` from its own
/openapi.json (with a key and without) and finds no contract violation and no 5xx; and the
description documents one error shape and every status the routes send."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.serving import Server, serve
from tests.factories import SAMPLE_CLIP

KEY = "schemathesis-key-0123456789"
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    media = tmp_path_factory.mktemp("media")
    shutil.copy(SAMPLE_CLIP, media / "people.mp4")
    cfg = {
        # Generated stream URLs may only point at loopback: the fuzzer reaches nothing else.
        "server": {"media_root": str(media), "allowed_hosts": ["127.0.0.1"]},
        "auth": {"keys": [KEY], "mutations_per_minute": 100000},
        "live": {"max_streams": 8, "backoff_initial_s": 1.0},
        "tracker": {"embedder": "histogram"},
        "streams": [{"id": "people", "url": "people.mp4", "fps": 5}],
    }
    with serve(cfg, tmp_path_factory.mktemp("srv")) as server:
        yield server
        server.proc.terminate()
        log = server.proc.communicate(timeout=30)[0]
    assert "Traceback" not in log, log[-3000:]


@pytest.mark.parametrize("with_key", [True, False], ids=["with-key", "without-key"])
def test_schemathesis_finds_no_violation(srv: Server, tmp_path: Path, with_key: bool) -> None:
    """Every check but positive_data_acceptance: a schema-valid stream can still be refused
    (its file is not under the media root, its host not allowed), which no schema can say."""
    cmd = [
        str(SCHEMATHESIS), "run", f"{srv.base}/openapi.json", "--checks", "all",
        "--exclude-checks", "positive_data_acceptance", "--max-examples", "15", "--seed", "11",
        "--generation-database", "none", "--no-color", "--request-timeout", "20",
        "--report", "junit", "--report-dir", str(tmp_path),
    ]  # fmt: skip
    if with_key:
        cmd += ["-H", f"X-API-Key: {KEY}"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "generated" in run.stdout


def test_the_description_documents_errors_and_metrics(srv: Server) -> None:
    status, doc = srv.request("GET", "/openapi.json")
    assert status == 200
    paths = doc["paths"]
    codes = {
        ("post", "/api/streams"): {"201", "400", "401", "403", "409", "413", "422", "429", "503"},
        ("delete", "/api/streams/{stream_id}"): {"204", "401", "403", "404", "422", "429", "503"},
        ("get", "/api/streams/{stream_id}"): {"200", "404", "422", "503"},
    }
    for (method, path), expected in codes.items():
        responses = paths[path][method]["responses"]
        assert set(responses) == expected, (method, path, set(responses))
        for code, spec in responses.items():
            if code.startswith(("4", "5")):
                ref = spec["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorBody"), (method, path, code)
    assert set(doc["components"]["schemas"]["ErrorBody"]["properties"]) == {"detail"}
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    metrics = paths["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
    assert "X-API-Key" in str(doc["components"]["securitySchemes"])
