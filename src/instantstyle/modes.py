"""Which diffusers pipeline makes a request, and the image inputs it takes.

text-to-image, img2img (``init_image``) or inpainting (``init_image`` + ``mask``), each alone or with
a ControlNet: six diffusers pipelines per architecture, all built with ``from_pipe`` from the loaded
one, so they share its weights and the adapter already attached to its UNet. Inputs are resized to
the request's size here, so every pipeline sees the same geometry.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import diffusers
import torch
from PIL import Image

from .control import check_controlnet_ref, check_model_ref, control_image
from .embeddings import load_image
from .errors import UserError
from .request import Request

#: Pipeline class names per architecture, by (mode, with ControlNet).
PIPELINES = {
    "sdxl": {
        ("text", False): "StableDiffusionXLPipeline",
        ("img2img", False): "StableDiffusionXLImg2ImgPipeline",
        ("inpaint", False): "StableDiffusionXLInpaintPipeline",
        ("text", True): "StableDiffusionXLControlNetPipeline",
        ("img2img", True): "StableDiffusionXLControlNetImg2ImgPipeline",
        ("inpaint", True): "StableDiffusionXLControlNetInpaintPipeline",
    },
    "sd15": {
        ("text", False): "StableDiffusionPipeline",
        ("img2img", False): "StableDiffusionImg2ImgPipeline",
        ("inpaint", False): "StableDiffusionInpaintPipeline",
        ("text", True): "StableDiffusionControlNetPipeline",
        ("img2img", True): "StableDiffusionControlNetImg2ImgPipeline",
        ("inpaint", True): "StableDiffusionControlNetInpaintPipeline",
    },
}
DEFAULT_STRENGTH = {"img2img": 0.8, "inpaint": 1.0}
VAE_TILING_ABOVE = 1024


def init_size(request: Request, native: int) -> tuple[int, int] | None:
    """The default output size with an init image: its aspect ratio, the long side at the model's native
    size (a 4000 px photo is not generated at 4000 px), both multiples of 8."""
    if request.init_image is None:
        return None
    width, height = load_image(request.init_image, "init image").size
    factor = native / max(width, height)
    return max(64, round(width * factor / 8) * 8), max(64, round(height * factor / 8) * 8)


def check_inputs(request: Request) -> None:
    """Every mode input readable (before any model loads): one-line errors for missing or broken files."""
    for name, what in (("init_image", "init image"), ("mask", "mask"), ("composition", "composition image")):
        if getattr(request, name) is not None:
            load_image(getattr(request, name), what)
    for region in (*request.regions, *(r for a in request.adapters for r in a.regions)):
        load_image(region, "region mask")
    for use in request.adapters:
        if use.path.startswith((".", "/", "~")) or use.path.count("/") < 2 or Path(use.path).expanduser().exists():
            from .pipeline import resolve_adapter_file

            resolve_adapter_file(use.path)  # a local reference: its errors, without touching the hub
        for ref in use.style:
            load_image(ref.path, f"style image of adapter {use.path}")
    if request.control is not None:
        source = request.control_image or request.init_image
        if request.control not in ("canny", "depth"):
            source = request.control
        assert source is not None
        load_image(source, "control image")
    if request.controlnet is not None:
        check_controlnet_ref(request.controlnet)
    if request.depth_model is not None:
        check_model_ref("depth model", request.depth_model)


def default_strength(request: Request) -> float | None:
    """The request's strength, or its mode's default (img2img 0.8, inpainting 1.0); none in text mode."""
    if request.mode == "text":
        return request.strength
    return request.strength if request.strength is not None else DEFAULT_STRENGTH[request.mode]


def as_text_pipeline(pipe: Any, dtype: torch.dtype) -> Any:
    """An img2img or inpainting pipeline (e.g. an inpainting model folder) as its text-to-image sibling,
    sharing the components: every mode is then built from it alike."""
    for table in PIPELINES.values():
        if type(pipe).__name__ in (table[("img2img", False)], table[("inpaint", False)]):
            return _from_pipe(table[("text", False)], pipe, dtype)
    return pipe


def set_vae_tiling(vae: Any, request: Request) -> None:
    """Decode in tiles above 1024 px (SDXL's native size), where a whole-image decode needs many GiB."""
    assert request.width is not None and request.height is not None
    if max(request.width, request.height) > VAE_TILING_ABOVE:
        vae.enable_tiling()
    else:
        vae.disable_tiling()


def check_model(request: Request, unet: Any) -> None:
    """Refuse a request the model cannot make: an inpainting UNet needs an init image and a mask."""
    if unet.config.in_channels == 9 and request.mode != "inpaint":
        raise UserError("this is an inpainting model: give --init-image and --mask")
    if request.strength is not None and int(request.steps * request.strength) < 1:
        raise UserError(
            f"strength {request.strength} of {request.steps} steps runs no denoising step; raise --steps or --strength"
        )
    if unet.config.in_channels not in (4, 9):
        raise UserError(f"the model's UNet takes {unet.config.in_channels} channels; only 4 (or 9 for inpainting)")


def mode_pipeline(base: Any, request: Request, controlnet: Any | None, dtype: torch.dtype) -> Any:
    """The diffusers pipeline for the request's mode, sharing ``base``'s components (no weight copy)."""
    arch = "sdxl" if base.unet.config.addition_embed_type == "text_time" else "sd15"
    name = PIPELINES[arch][(request.mode, controlnet is not None)]
    if type(base).__name__ == name:
        return base
    extra = {"controlnet": controlnet} if controlnet is not None else {}
    return _from_pipe(name, base, dtype, **extra)


def _from_pipe(name: str, base: Any, dtype: torch.dtype, **extra: Any) -> Any:
    """``from_pipe`` at the loaded dtype (its default would cast the shared modules to float32), without its
    per-module warning about casting (the modules already have that dtype)."""
    quiet = logging.getLogger("diffusers.models.modeling_utils")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        return getattr(diffusers, name).from_pipe(base, dtype=dtype, **extra)
    finally:
        quiet.setLevel(level)


def mode_kwargs(request: Request, depth_model: Any | None = None) -> dict[str, Any]:
    """The image inputs of the request's mode as diffusers keyword arguments, at the request's size
    (``depth_model``: the loaded ``request.depth_model``, which makes the depth map)."""
    assert request.width is not None and request.height is not None
    size = (request.width, request.height)
    kwargs: dict[str, Any] = {}
    if request.mode != "text":
        kwargs["image"] = load_image(request.init_image or "", "init image").resize(size, Image.Resampling.LANCZOS)
        kwargs["strength"] = request.strength
    if request.mode == "inpaint":
        kwargs["mask_image"] = load_mask(request.mask or "", size)
    if request.control is not None:
        source = request.control if request.control not in ("canny", "depth") else request.control_image
        condition = control_image(request.control, source or request.init_image or "", size, depth_model)
        kwargs["control_image" if request.mode != "text" else "image"] = condition
        kwargs["controlnet_conditioning_scale"] = request.control_scale
    if request.mode == "text" or request.mode == "inpaint" or request.control is not None:
        kwargs["width"], kwargs["height"] = size
    return kwargs


def load_mask(path: str, size: tuple[int, int]) -> Image.Image:
    """A mask as greyscale at the output size (white = repaint)."""
    return load_image(path, "mask").convert("L").resize(size, Image.Resampling.BILINEAR)


def paste_back(images: list[Image.Image], request: Request) -> list[Image.Image]:
    """Inpainting: put the init image back outside the mask, so untouched pixels stay exactly as given
    (the VAE round trip would otherwise soften them)."""
    if request.mode != "inpaint":
        return images
    first = images[0]
    init = load_image(request.init_image or "", "init image").resize(first.size, Image.Resampling.LANCZOS)
    mask = load_mask(request.mask or "", first.size)
    return [Image.composite(image.convert("RGB"), init, mask) for image in images]

