"""Which diffusers pipeline makes a request, and the image inputs it takes.

text-to-image, img2img (``init_image``) or inpainting (``init_image`` + ``mask``), each alone or with a
ControlNet: diffusers' ``AutoPipelineFor*.from_pipe`` builds the pipeline of each mode from the loaded
text-to-image one (a family may name one Auto does not know), so they share its weights and the adapter
already in its denoiser. Inputs are resized to the request's size here, so every pipeline sees the same
geometry.
"""

from __future__ import annotations

from typing import Any

import diffusers
from PIL import Image

from ..core import csgo
from ..core.request import CONTROL_KINDS, Request
from ..errors import UserError
from ..families import Family
from ..files.images import MAX_PIXELS, load_image
from .control import control_image

DEFAULT_STRENGTH = {"img2img": 0.8, "inpaint": 1.0}
AUTO_PIPELINES = {"text": "AutoPipelineForText2Image", "img2img": "AutoPipelineForImage2Image",
                  "inpaint": "AutoPipelineForInpainting"}


def init_size(request: Request, native: int, multiple: int = 8, max_pixels: int | None = MAX_PIXELS
              ) -> tuple[int, int] | None:
    """The default output size with an init image (or a photo to restyle): its aspect ratio, the long side at the
    model's native size (a 4000 px photo is not generated at 4000 px), both multiples of ``multiple`` (the model's
    grid)."""
    source = request.init_image or request.restyle
    if source is None:
        return None
    width, height = load_image(source, "init image" if request.init_image else "photo to restyle", max_pixels).size
    factor = native / max(width, height)
    low = max(64, multiple)
    return (max(low, round(width * factor / multiple) * multiple),
            max(low, round(height * factor / multiple) * multiple))


def default_strength(request: Request) -> float | None:
    """The request's strength, or its mode's default (img2img 0.8, inpainting 1.0); none in text mode."""
    if request.mode in ("text", "restyle"):  # restyle: the call's strength is 1, from the inverted latent
        return request.strength
    return request.strength if request.strength is not None else DEFAULT_STRENGTH[request.mode]


def mode_pipeline(base: Any, family: Family, request: Request, controlnet: Any | None) -> Any:
    """The diffusers pipeline for the request's mode, sharing ``base``'s components (no weight copy)."""
    with_control = controlnet is not None
    if request.mode == "text" and not with_control:
        return base
    extra = {"controlnet": controlnet} if with_control else {}
    mode = "img2img" if request.mode == "restyle" else request.mode  # restyle: img2img from the inverted latent
    name = family.mode_pipelines.get((mode, with_control))
    try:
        if name is not None:
            return getattr(diffusers, name).from_pipe(base, **extra)
        return getattr(diffusers, AUTO_PIPELINES[mode]).from_pipe(base, **extra)
    except ValueError as err:  # AutoPipeline has no pipeline for this family and mode
        what = f"{request.mode}{' with a ControlNet' if with_control else ''}"
        raise UserError(f"{what} is not available for {family.name} models ({err})") from None


def mode_kwargs(
    request: Request, depth_model: Any | None = None, max_pixels: int | None = MAX_PIXELS
) -> dict[str, Any]:
    """The image inputs of the request's mode as diffusers keyword arguments, at the request's size
    (``depth_model``: the loaded ``request.depth_model``, which makes the depth map; images over ``max_pixels``
    are refused)."""
    assert request.width is not None and request.height is not None
    size = (request.width, request.height)
    kwargs: dict[str, Any] = {}
    if request.mode not in ("text", "restyle"):  # restyle: the inverted latent, added by the restyle hook
        init = load_image(request.init_image or "", "init image", max_pixels)
        kwargs["image"] = init.resize(size, Image.Resampling.LANCZOS)
        kwargs["strength"] = request.strength
    if request.mode == "inpaint":
        kwargs["mask_image"] = load_mask(request.mask or "", size, max_pixels)
    if request.control == "tile" and not (request.control_image or request.init_image or request.restyle):
        kwargs["image"] = csgo.content_image(request, max_pixels)  # CSGO's: its content image at the size, or black
        kwargs["controlnet_conditioning_scale"] = request.control_scale
    elif request.control is not None:
        source = request.control if request.control not in CONTROL_KINDS else request.control_image
        condition = control_image(request.control, source or request.init_image or request.restyle or "", size,
                                  depth_model, max_pixels)
        kwargs["control_image" if request.mode != "text" else "image"] = condition
        kwargs["controlnet_conditioning_scale"] = request.control_scale
    if request.mode == "text" or request.mode == "inpaint" or request.control is not None:
        kwargs["width"], kwargs["height"] = size
    return kwargs


def fit_call(pipe: Any, kwargs: dict[str, Any], request: Request) -> dict[str, Any]:
    """The call's arguments as the mode's pipeline names them: a ControlNet text-to-image pipeline without an
    ``image`` argument (SD3's, FLUX's) takes the control image as ``control_image``; a pipeline that takes a size
    (FLUX's img2img defaults to 1024 px otherwise) gets the request's."""
    import inspect

    accepted = inspect.signature(pipe.__call__).parameters
    fitted = dict(kwargs)
    if "image" in fitted and "image" not in accepted and request.mode == "text":
        fitted["control_image"] = fitted.pop("image")
    if "width" in accepted and "width" not in fitted:
        assert request.width is not None and request.height is not None
        fitted["width"], fitted["height"] = request.width, request.height
    return fitted


def load_mask(path: str, size: tuple[int, int], max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """A mask as greyscale at the output size (white = repaint)."""
    return load_image(path, "mask", max_pixels).convert("L").resize(size, Image.Resampling.BILINEAR)


def paste_back(images: list[Image.Image], request: Request, max_pixels: int | None = MAX_PIXELS) -> list[Image.Image]:
    """Inpainting: put the init image back outside the mask, so untouched pixels stay exactly as given
    (the VAE round trip would otherwise soften them)."""
    if request.mode != "inpaint":
        return images
    first = images[0]
    init = load_image(request.init_image or "", "init image", max_pixels).resize(first.size, Image.Resampling.LANCZOS)
    mask = load_mask(request.mask or "", first.size, max_pixels)
    return [Image.composite(image.convert("RGB"), init, mask) for image in images]

