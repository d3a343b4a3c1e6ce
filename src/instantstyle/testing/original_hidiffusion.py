"""The authors' HiDiffusion package, made importable on today's diffusers, and one comparison run both ways,
for equivalence checks only (the tests, and the benchmark's GPU mode at sizes too large for a CPU).

``hidiffusion`` 0.1.10 (PyPI, unmaintained) fails to import on current diffusers only because it
imports ``MultiControlNetModel`` from ``diffusers.pipelines.controlnet.multicontrolnet``, which moved
to ``diffusers.models.controlnets``. This module fetches its wheel once with pip (no dependencies; pip's
own ``PIP_FIND_LINKS`` / ``PIP_NO_INDEX`` point it at a wheel carried to a machine without network),
changes that one import in a private copy under a cache folder, and imports the copy. The project does
not depend on the package: only checks comparing pixels with it use this.

``compare_with_package`` runs one text-to-image generation on a narrow model (``testing.hires``) with
InstantStyle's style preset loaded the diffusers way, with ``instantstyle.modes.hidiffusion`` and with the package.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from .hires import HiresModels
from .trees import build_once

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
    build_once(root, REQUIREMENT, _fetch_into)
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


# --------------------------------------------------------------------------------------------
# One generation both ways

#: diffusers' set_ip_adapter_scale for InstantStyle's style preset (SDXL: up_blocks.0.attentions.1 only).
STYLE_SCALES: dict[str, Any] = {"sdxl": {"up": {"block_0": [0.0, 1.0, 0.0]}}, "sd15": {"up": {"block_1": 1.0}}}
#: Seeds MSW-MSA's shifts: ours through ``hidiffusion(seed=...)``, the package's through torch's global generator.
SHIFT_SEED = 11
#: (family, side in px, steps) where the large-size switching steps apply (SDXL from 4096 px, SD1.5 from 2048):
#: too large for a CPU; checked on a GPU by the test suite and the benchmark's gpu mode.
LARGE_SIZES = (("sdxl", 4096, 4), ("sd15", 2048, 4))


def load_with_style_adapter(hires: HiresModels, family: str, device: str = "cpu") -> Any:
    """The diffusers way: the pipeline, ``load_ip_adapter``, and the style preset as per-block scales."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if family == "sdxl":
        pipe = StableDiffusionXLPipeline.from_pretrained(str(hires.sdxl))
        adapter = hires.sdxl_adapter
    else:
        pipe = StableDiffusionPipeline.from_pretrained(str(hires.sd15))
        adapter = hires.sd15_adapter
    pipe.load_ip_adapter(str(adapter.parents[1]), subfolder=adapter.parent.name, weight_name=adapter.name,
                         image_encoder_folder=None)
    pipe.set_ip_adapter_scale(STYLE_SCALES[family])
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def style_embeds(pipe: Any) -> list[torch.Tensor]:
    """One style embedding (negative half zeros, as InstantStyle's CFG uses), as ``ip_adapter_image_embeds``."""
    dim = pipe.unet.encoder_hid_proj.image_projection_layers[0].image_embeds.in_features
    style = torch.randn(1, 1, dim, generator=torch.Generator().manual_seed(5))
    return [torch.cat([torch.zeros_like(style), style]).to(pipe.device)]


def generate(pipe: Any, width: int, height: int, steps: int, output_type: str = "np") -> np.ndarray:
    """One image (``output_type="latent"``: its final latents) from fixed seeds, as a float array."""
    torch.manual_seed(SHIFT_SEED)  # the package draws its window shifts from the global generator
    out = pipe("a cat", width=width, height=height, num_inference_steps=steps,
               ip_adapter_image_embeds=style_embeds(pipe), generator=torch.Generator().manual_seed(1),
               output_type=output_type).images[0]
    return out.float().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out, dtype=np.float64)


@dataclass
class Comparison:
    """One generation with ``instantstyle.modes.hidiffusion`` (``ours``, and what it did), with the package
    (``theirs``) and, when asked, without HiDiffusion (``plain``)."""

    ours: np.ndarray
    theirs: np.ndarray
    phases: list[str]
    windowed: int
    plain: np.ndarray | None = None

    @property
    def max_difference(self) -> float:
        return float(np.abs(self.ours - self.theirs).max())

    @property
    def relative_difference(self) -> float:
        """The largest difference over the largest magnitude of the package's output."""
        return self.max_difference / max(float(np.abs(self.theirs).max()), 1e-30)


def compare_with_package(
    hires: HiresModels, package: ModuleType, family: str, width: int, height: int, steps: int, *,
    device: str = "cpu", output_type: str = "np", plain: bool = False,
) -> Comparison:
    """Text-to-image on the narrow ``family`` model with the style preset: ours, the package's (and plain)."""
    from ..modes.hidiffusion import denoising_calls, hidiffusion

    ours_pipe = load_with_style_adapter(hires, family, device)
    without = generate(ours_pipe, width, height, steps, output_type) if plain else None
    with hidiffusion(ours_pipe.unet, family, steps=denoising_calls(ours_pipe.scheduler, steps), seed=SHIFT_SEED) as run:
        ours = generate(ours_pipe, width, height, steps, output_type)
    del ours_pipe
    theirs_pipe = package.apply_hidiffusion(load_with_style_adapter(hires, family, device))
    theirs = generate(theirs_pipe, width, height, steps, output_type)
    return Comparison(ours, theirs, run.phases, run.windowed, without)
