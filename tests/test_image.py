"""The CPU image, built and smoke-tested for real (docker/build.sh, docker/smoke.sh): slow
(minutes on a cold cache), so it runs under ``make image-test`` (marker ``image``)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from benchmarks.serving import free_port
from tests.factories import REPO

pytestmark = pytest.mark.image


def test_cpu_image_builds_replays_and_serves() -> None:
    if not (shutil.which("buildah") or shutil.which("docker")):
        pytest.skip("no container tool (docker, podman or buildah)")
    env = {**os.environ, "IMAGE": "localhost/vigil:cpu"}
    build = subprocess.run(["bash", "docker/build.sh"], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=3000)  # fmt: skip
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    if not shutil.which("buildah"):
        pytest.skip("the smoke test runs the image with buildah")
    smoke = subprocess.run(["bash", "docker/smoke.sh"], cwd=REPO,
                           env={**env, "PORT": str(free_port())}, capture_output=True,
                           text=True, timeout=600)  # fmt: skip
    assert smoke.returncode == 0, smoke.stdout[-3000:] + smoke.stderr[-3000:]
    assert "smoke: replay ok, 40 frames" in smoke.stdout
    assert "smoke: serve /healthz" in smoke.stdout
