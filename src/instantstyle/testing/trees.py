"""One way to build a fixture tree on disk once: written into a temporary sibling, marked with its version and
renamed into place, so an interrupted build leaves no half tree and, of concurrent builders, the first to finish
wins. Every fixture builder (tiny, modes, hires, DiT, the original HiDiffusion package) goes through it."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import torch

MARKER = ".complete"


def is_built(root: Path, version: str) -> bool:
    """True when ``root`` holds a finished build of ``version``."""
    marker = root / MARKER
    return marker.is_file() and marker.read_text().strip() == version


def build_once(root: Path, version: str, build: Callable[[Path], object]) -> None:
    """Make ``root`` a finished build of ``version`` (a no-op when it is one): ``build(tmp)`` writes the tree into an
    empty temporary folder, under a forked torch RNG (the caller's global RNG stays untouched). A tree of another
    version is replaced; a non-empty ``root`` that is not a fixture tree is refused."""
    if is_built(root, version):
        return
    if root.exists() and any(root.iterdir()) and not (root / MARKER).exists():
        raise FileExistsError(f"{root} is not empty and not an instantstyle fixture tree; not replacing it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        with torch.random.fork_rng(devices=[]):
            build(tmp)
        (tmp / MARKER).write_text(version)
        if is_built(root, version):  # another process finished first: keep its tree, drop ours
            return
        if root.exists():  # an empty folder or a stale version: move it aside, then swap in
            stale = root.parent / f".{root.name}.stale-{uuid.uuid4().hex[:8]}"
            root.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            tmp.rename(root)
        except OSError:
            if not is_built(root, version):  # lost a race to something that is not a finished build
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
