"""A narrow random-weight SDXL with SDXL base's exact module names, for high-resolution methods.

HiDiffusion acts on named blocks of SDXL base, and its original package recognises SDXL by comparing
the UNet's module names with SDXL base's. The shared tiny SDXL has fewer transformer layers in its
lowest level (2, not 10), so it is not recognised. This model is the tiny SDXL with SDXL base's layer
counts (transformer layers 1, 2, 10 per level; 2 layers per block) at the tiny widths (32, 64, 128):
every module name of SDXL base exists, every tensor is small. Likewise a narrow SD1.5 whose widths
change where SD1.5's do (32, 64, 128, 128 for 320, 640, 1280, 1280), so it has SD1.5's shortcut
convolutions, which the tiny SD1.5 (32, 64, 64, 64) lacks. The other components (text encoders,
VAE, scheduler, tokenizers) and the image encoder are copied from the tiny fixture tree, and a
matching global IP-Adapter is written in h94's key layout, so everything loads through the public
loaders (``from_pretrained``, ``load_ip_adapter``) as the real checkpoints do.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .fixtures import FIXTURE_VERSION, TinyModels, _global_adapter, _save_adapter, tiny_models
from .trees import build_once

HIRES_VERSION = "1"
"""Bumped whenever these fixtures change, so stale cached builds are rebuilt."""

#: SDXL base's transformer layers per level (the tiny SDXL has (1, 2, 2)).
SDXL_TRANSFORMER_LAYERS = (1, 2, 10)
#: SD1.5's widths (320, 640, 1280, 1280), narrowed (the tiny SD1.5 has (32, 64, 64, 64)).
SD15_CHANNELS = (32, 64, 128, 128)


@dataclass(frozen=True)
class HiresModels:
    """Paths of the narrow-SDXL fixture tree (see ``hires_models``)."""

    root: Path
    sdxl: Path  # diffusers folder: StableDiffusionXLPipeline with the narrow UNet
    adapters: Path  # mirrors hub repo h94/IP-Adapter
    sdxl_adapter: Path  # sdxl_models/ip-adapter_sdxl.safetensors (global, h94 keys ip_adapter.1 ... 139)
    sdxl_image_encoder: Path  # sdxl_models/image_encoder
    sd15: Path  # diffusers folder: StableDiffusionPipeline with the narrow SD1.5 UNet
    sd15_adapter: Path  # models/ip-adapter_sd15.safetensors (global, h94 keys ip_adapter.1 ... 31)
    sd15_image_encoder: Path  # models/image_encoder
    style_image: Path


def _layout(root: Path) -> HiresModels:
    adapters = root / "IP-Adapter"
    return HiresModels(
        root=root,
        sdxl=root / "sdxl",
        adapters=adapters,
        sdxl_adapter=adapters / "sdxl_models" / "ip-adapter_sdxl.safetensors",
        sdxl_image_encoder=adapters / "sdxl_models" / "image_encoder",
        sd15=root / "sd15",
        sd15_adapter=adapters / "models" / "ip-adapter_sd15.safetensors",
        sd15_image_encoder=adapters / "models" / "image_encoder",
        style_image=root / "style.png",
    )


def _marker_text() -> str:
    """The built tree depends on the tiny tree it copies from: both versions go into the marker."""
    return f"{HIRES_VERSION}/{FIXTURE_VERSION}"


def _build_model(source: Path, dest: Path, changes: dict, seed: int) -> Any:
    """Copy the pipeline folder ``source`` with a fresh UNet: its config with ``changes``, random weights."""
    from diffusers import UNet2DConditionModel

    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("unet"))
    config = {**UNet2DConditionModel.load_config(str(source / "unet")), **changes}
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(config)
    unet.save_pretrained(str(dest / "unet"), safe_serialization=True)
    return unet


def _build_adapter(unet: Any, source_encoder: Path, encoder: Path, adapter: Path, seed: int) -> None:
    """Copy the image encoder and write a global IP-Adapter for ``unet`` fed by it."""
    shutil.copytree(source_encoder, encoder)
    config = json.loads((encoder / "config.json").read_text())
    embed_dim = int(config.get("vision_config", config)["projection_dim"])
    _save_adapter(_global_adapter(unet, embed_dim, seed), adapter)


def _build_into(tmp: Path, tiny: TinyModels, seed: int) -> None:
    """Copy the tiny models' other components, then write the narrow UNets and their adapters."""
    paths = _layout(tmp)
    sdxl = _build_model(tiny.sdxl, paths.sdxl, {"transformer_layers_per_block": list(SDXL_TRANSFORMER_LAYERS)}, seed)
    encoders = tiny.adapters
    _build_adapter(sdxl, encoders / "sdxl_models" / "image_encoder", paths.sdxl_image_encoder, paths.sdxl_adapter,
                   seed + 1)
    sd15 = _build_model(tiny.sd15, paths.sd15, {"block_out_channels": list(SD15_CHANNELS)}, seed + 2)
    _build_adapter(sd15, encoders / "models" / "image_encoder", paths.sd15_image_encoder, paths.sd15_adapter, seed + 3)
    shutil.copyfile(tiny.style_image, paths.style_image)


def build_hires_models(root: Path, tiny: TinyModels, seed: int = 0) -> HiresModels:
    """Build the narrow-SDXL tree under ``root`` from the ``tiny`` tree; a no-op when already built.

    Written to a temporary sibling and renamed into place, so an interrupted build leaves nothing
    half-made; a tree of another version (of this module or of the tiny fixtures) is replaced.
    """
    root = Path(root).expanduser().absolute()
    build_once(root, _marker_text(), lambda tmp: _build_into(tmp, tiny, seed))
    return _layout(root)


def hires_models(cache_dir: Path | None = None, tiny: TinyModels | None = None) -> HiresModels:
    """Build (once) and return the narrow-SDXL tree.

    It lives at ``cache_dir`` if given, else at ``$INSTANTSTYLE_FIXTURES/../hires-<HIRES_VERSION>`` when
    that variable is set, else at ``~/.cache/instantstyle/hires-<HIRES_VERSION>``; ``tiny`` defaults to
    the shared tiny tree (``tiny_models()``).
    """
    if cache_dir is None:
        env = os.environ.get("INSTANTSTYLE_FIXTURES")
        base = Path(env).expanduser().absolute().parent if env else Path.home() / ".cache" / "instantstyle"
        cache_dir = base / f"hires-{HIRES_VERSION}"
    return build_hires_models(Path(cache_dir), tiny if tiny is not None else tiny_models())
