"""Tiny stand-ins for the image-based modes: ControlNets, inpainting models and their input images.

Built from the shared tiny SDXL / SD1.5 fixtures in the real topology and saved the way the real
ones ship (a ControlNet ``save_pretrained`` folder; an inpainting pipeline folder whose UNet takes 9
channels and whose ``model_index.json`` names the inpainting pipeline), so the code under test loads
them through the same loaders as the real checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .fixtures import TinyModels, make_style_image
from .trees import build_once

MODES_VERSION = "2"


@dataclass(frozen=True)
class ModeModels:
    """Paths of the mode fixtures (see ``tiny_mode_models``)."""

    root: Path
    sdxl_controlnet: Path
    sd15_controlnet: Path
    sdxl_inpaint: Path
    sd15_inpaint: Path
    depth_model: Path  # a transformers DPT depth estimator
    init_image: Path  # 64x64 picture to restyle
    left_mask: Path  # 64x64, white left half
    right_mask: Path  # 64x64, white right half
    depth_map: Path  # 64x64 grey ramp
    wide_style: Path  # 192x64: a crop of it loses two thirds
    second_style: Path  # 64x64, unlike the shared style image


def _layout(root: Path) -> ModeModels:
    return ModeModels(
        root, root / "sdxl-controlnet", root / "sd15-controlnet", root / "sdxl-inpaint", root / "sd15-inpaint",
        root / "dpt", root / "init.png", root / "left.png", root / "right.png", root / "depth.png", root / "wide.png",
        root / "style2.png",
    )


def _build_controlnet(unet_dir: Path, dest: Path, seed: int) -> None:
    """A ControlNet copied from the tiny UNet (as ControlNets are trained), its zero convolutions
    given small random weights so that the control image visibly steers the result. Seeded: two builds are
    byte-identical."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(unet_dir))
    with torch.random.fork_rng(devices=[]):  # from_unet draws the layers it adds from the global RNG: seed it here,
        torch.manual_seed(seed)  # and leave the caller's RNG as it was
        controlnet = ControlNetModel.from_unet(unet)
    gen = torch.Generator().manual_seed(seed)
    zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
    with torch.no_grad():
        for conv in zero_convs:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * 0.3)
        last = controlnet.controlnet_cond_embedding.conv_out
        last.weight.copy_(torch.randn(last.weight.shape, generator=gen) * 0.3)
    controlnet.save_pretrained(str(dest))


def _build_inpaint(base: Path, dest: Path, seed: int) -> None:
    """The base pipeline with a fresh 9-channel UNet (latents, mask, masked-image latents), saved as the
    inpainting pipeline class, as real inpainting checkpoints are."""
    import diffusers
    from diffusers import DiffusionPipeline, UNet2DConditionModel

    pipe = DiffusionPipeline.from_pretrained(str(base))
    config = dict(UNet2DConditionModel.load_config(str(base / "unet")))
    config["in_channels"] = 9
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(config)
    name = type(pipe).__name__.replace("Pipeline", "InpaintPipeline")
    components = {**pipe.components, "unet": unet}
    inpaint = getattr(diffusers, name)(**components)
    inpaint.save_pretrained(str(dest))


def _build_depth_model(dest: Path, seed: int) -> None:
    """A DPT depth estimator (what Depth Anything / DPT checkpoints are to transformers) at 32 px."""
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    torch.manual_seed(seed)
    config = DPTConfig(
        image_size=32, patch_size=16, hidden_size=32, num_hidden_layers=4, backbone_out_indices=[0, 1, 2, 3],
        num_attention_heads=4, intermediate_size=37, neck_hidden_sizes=[16, 32, 32, 32], fusion_hidden_size=16,
        is_hybrid=False,
    )
    DPTForDepthEstimation(config).save_pretrained(str(dest))
    DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(str(dest))


def _save(array: np.ndarray, path: Path) -> Path:
    Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(path)
    return path


def _init_picture() -> np.ndarray:
    """The 64x64 picture to restyle: a colour ramp with a yellow disc."""
    y, x = np.mgrid[0:64, 0:64].astype(np.float32)
    init = np.stack([x * 4, y * 4, 255 - (x + y) * 2], axis=-1)
    init[(x - 40) ** 2 + (y - 24) ** 2 < 144] = (250, 230, 40)
    return init


def _build_images(root: Path) -> None:
    y, x = np.mgrid[0:64, 0:64].astype(np.float32)
    _save(_init_picture(), root / "init.png")
    left = np.where(x < 32, 255, 0)
    _save(np.stack([left] * 3, axis=-1), root / "left.png")
    _save(np.stack([255 - left] * 3, axis=-1), root / "right.png")
    _save(np.stack([y * 4] * 3, axis=-1), root / "depth.png")
    make_style_image(root / "wide.png", (192, 64), seed=11)
    make_style_image(root / "style2.png", (64, 64), seed=23)


def tiny_mode_models(root: Path, tiny: TinyModels, seed: int = 0) -> ModeModels:
    """Build (once, atomically) and return the mode fixtures under ``root``."""
    root = Path(root).expanduser().absolute()

    def build(tmp: Path) -> None:
        _build_controlnet(tiny.sdxl / "unet", tmp / "sdxl-controlnet", seed)
        _build_controlnet(tiny.sd15 / "unet", tmp / "sd15-controlnet", seed + 1)
        _build_inpaint(tiny.sdxl, tmp / "sdxl-inpaint", seed + 2)
        _build_inpaint(tiny.sd15, tmp / "sd15-inpaint", seed + 3)
        _build_depth_model(tmp / "dpt", seed + 4)
        _build_images(tmp)

    build_once(root, MODES_VERSION, build)
    return _layout(root)


TILE_VERSION = "1"


@dataclass(frozen=True)
class TileModels:
    """Paths of the tile ControlNet fixture (see ``tiny_tile_controlnet``)."""

    root: Path
    sdxl_controlnet: Path  # a ControlNet folder copied from the tiny SDXL UNet, as tile ControlNets are
    control_image: Path  # 64x64: a blurred, blocky copy of the init picture, what a tile ControlNet is given


def tiny_tile_controlnet(root: Path, tiny: TinyModels, seed: int = 5) -> TileModels:
    """Build (once, atomically) a tile ControlNet for the tiny SDXL and its control image under ``root``: the same
    ControlNet class as canny and depth ones (a tile ControlNet differs only in what it was trained on: blurred,
    low-resolution copies of the picture), so ``--control IMAGE --controlnet FOLDER`` runs it as a user would."""
    root = Path(root).expanduser().absolute()

    def build(tmp: Path) -> None:
        _build_controlnet(tiny.sdxl / "unet", tmp / "sdxl-controlnet-tile", seed)
        init = Image.fromarray(np.clip(_init_picture(), 0, 255).astype(np.uint8))
        init.resize((16, 16), Image.Resampling.BOX).resize((64, 64), Image.Resampling.BICUBIC).save(tmp / "tile.png")

    build_once(root, TILE_VERSION, build)
    return TileModels(root, root / "sdxl-controlnet-tile", root / "tile.png")
