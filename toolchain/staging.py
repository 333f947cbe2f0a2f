"""Registry entries are built aside and swapped in whole: the shared plumbing of every step.

A step writes its folder under a staging name in the same parent and renames it into place only
when complete, so a failed or interrupted build never replaces a good entry; single files are
written to a temporary name and renamed (``models.manifest.atomic_write_bytes``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def progress_bar(total: int, start: int, desc: str) -> Callable[[int, dict[str, float]], None]:
    from tqdm import tqdm

    bar = tqdm(total=total, initial=start, desc=desc, unit="step", dynamic_ncols=True)

    def update(step: int, losses: dict[str, float]) -> None:
        bar.update(step - bar.n)
        bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()}, refresh=False)
        if step >= total:
            bar.close()

    return update


def swap_in(staging: Path, folder: Path) -> None:
    """Replace ``folder`` by the complete ``staging`` folder (same parent): the old one is
    renamed aside first and removed only after the new one is in place."""
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(staging, folder)
    shutil.rmtree(old, ignore_errors=True)
