"""The authors' HiDiffusion package, made importable on today's diffusers, for equivalence tests only.

``hidiffusion`` 0.1.10 (PyPI, unmaintained) fails to import on current diffusers only because it
imports ``MultiControlNetModel`` from ``diffusers.pipelines.controlnet.multicontrolnet``, which moved
to ``diffusers.models.controlnets``. This module fetches its wheel once with pip (no dependencies),
changes that one import in a private copy under a cache folder, and imports the copy. The project does
not depend on the package: only tests comparing pixels with it use this.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path
from types import ModuleType

REQUIREMENT = "hidiffusion==0.1.10"
OLD_IMPORT = "from diffusers.pipelines.controlnet.multicontrolnet import MultiControlNetModel"
NEW_IMPORT = "from diffusers.models.controlnets import MultiControlNetModel"


class PackageUnavailable(RuntimeError):
    """The package could not be fetched (no network, PyPI down...); the message says why."""


def _default_dir() -> Path:
    env = os.environ.get("INSTANTSTYLE_HIDIFFUSION_PACKAGE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "instantstyle" / REQUIREMENT.replace("==", "-")


def _fetch_into(tmp: Path) -> None:
    """pip-download the wheel into ``tmp``, unpack it there and fix its one import."""
    wheels = tmp / "wheel"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q",
               "-d", str(wheels), REQUIREMENT]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise PackageUnavailable(f"pip download {REQUIREMENT} failed: {err}") from None
    found = sorted(wheels.glob("*.whl"))
    if done.returncode != 0 or not found:
        reason = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise PackageUnavailable(f"pip download {REQUIREMENT} failed: {reason}")
    with zipfile.ZipFile(found[0]) as wheel:
        wheel.extractall(tmp / "site")
    source = tmp / "site" / "hidiffusion" / "hidiffusion.py"
    text = source.read_text()
    if OLD_IMPORT not in text:
        raise PackageUnavailable(f"{REQUIREMENT} no longer has the import this module fixes")
    source.write_text(text.replace(OLD_IMPORT, NEW_IMPORT))


def package_dir(cache_dir: Path | None = None) -> Path:
    """The folder holding the fixed ``hidiffusion`` package (to put on ``sys.path``), fetched once."""
    root = Path(cache_dir) if cache_dir is not None else _default_dir()
    site = root / "site"
    if (root / ".complete").is_file():
        return site
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        _fetch_into(tmp)
        (tmp / ".complete").write_text(REQUIREMENT)
        if not (root / ".complete").is_file():
            shutil.rmtree(root, ignore_errors=True)
            tmp.rename(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return site


def original_hidiffusion(cache_dir: Path | None = None) -> ModuleType:
    """Import the authors' package (``apply_hidiffusion``, ``remove_hidiffusion``) from the fixed copy."""
    site = package_dir(cache_dir)
    loaded = sys.modules.get("hidiffusion")
    if loaded is not None:
        if Path(loaded.__file__ or "").resolve().is_relative_to(site.resolve()):
            return loaded
        raise PackageUnavailable(f"another 'hidiffusion' is already imported from {loaded.__file__}")
    sys.path.insert(0, str(site))
    try:
        return importlib.import_module("hidiffusion")
    finally:
        sys.path.remove(str(site))
