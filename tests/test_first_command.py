"""The README's first command, as a newcomer runs it: a fresh clone, a fresh virtual environment, offline models.

Slow (a whole install, minutes): marked ``slow``, so the quick ``python -m pytest`` leaves it out and CI runs it
with ``python -m pytest -m slow``. pip reuses its own cache (the pinned torch wheel, the other wheels), as a
second install on the same machine does; the demo itself needs no network (it sets ``HF_HUB_OFFLINE``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from instantstyle.app import demo
from instantstyle.core.request import PNG_KEY

from .test_docs import ROOT, readme_first_command


def clone(dest: Path) -> Path:
    """The tracked files of this checkout (what a clone holds) copied to ``dest``, without git history."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True)
    if listed.returncode:  # not a git checkout: everything but what a build or a run leaves behind
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(".venv", ".git", "site", "*.egg-info", "__pycache__",
                                                                  ".*_cache", "demo", "out"))
        return dest
    for name in filter(None, listed.stdout.decode().split("\0")):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


@pytest.mark.slow
def test_the_readmes_first_command_makes_one_image_per_mode_in_a_fresh_environment(tmp_path):
    folder = clone(tmp_path / "instantstyle")
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env["HF_HUB_OFFLINE"] = "1"
    done = subprocess.run(["bash", "-c", readme_first_command()], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=3000)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    out = folder / "demo" / "out"
    for mode in demo.MODES:
        if mode.writes_image:
            with Image.open(out / f"{mode.name}.png") as image:
                assert PNG_KEY in image.info, mode.name
    assert (out / "sheet.png").is_file() and f"{len(demo.MODES)} of {len(demo.MODES)} modes ran" in done.stdout
