"""ControlNet inputs: the control image (canny edges computed here, a depth map or a ready image) and the model.

Canny is OpenCV's (``opencv-python-headless``), thresholds 100 and 200 on the colour image, exactly as the
original InstantStyle and InstantStyle-Plus scripts compute it.
``--control depth`` takes a precomputed depth map (white = near), or a photo plus a transformers
depth-estimation model (``depth_model``, e.g. Depth Anything) that makes the map. The adapter's image
tokens never reach the ControlNet: diffusers gives it only the text embeddings, and
``load_controlnet`` refuses one carrying an image projection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import UserError
from ..families import Family
from ..files.images import MAX_PIXELS, load_image
from ..loading.hub import check_controlnet_ref, check_model_ref, hub_error


def canny(image: Image.Image, low: float = 100.0, high: float = 200.0) -> Image.Image:
    """Canny edges of an image as white lines on black (RGB), the input canny ControlNets were trained on: OpenCV's
    ``cv2.Canny(image, 100, 200)`` on the 3-channel image in OpenCV's BGR order, as the InstantStyle and
    InstantStyle-Plus scripts compute it (3x3 Sobel, L1 magnitude, no blur; per pixel the channel with the largest
    gradient, so an edge between two colours of equal brightness is found)."""
    import cv2

    bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
    edges = cv2.Canny(bgr, low, high)
    return Image.fromarray(np.repeat(edges[:, :, None], 3, axis=2))


def control_image(kind: str, source: str, size: tuple[int, int], depth_model: Any | None = None,
                  max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """The conditioning image for ``--control kind`` at the output size: canny edges of ``source``, its
    depth map by ``depth_model``, or ``source`` itself (a tile ControlNet's input, a depth map or a ready control
    image)."""
    what = {"canny": "control image", "depth": "depth map"}.get(kind, "control image")
    image = load_image(source, "control image" if depth_model is not None else what, max_pixels)
    if kind == "canny":
        return canny(image.resize(size, Image.Resampling.LANCZOS))
    if kind == "depth" and depth_model is not None:
        return estimate_depth(image, depth_model, size)
    return image.resize(size, Image.Resampling.BICUBIC)


def load_depth_model(ref: str, device: torch.device) -> tuple[Any, Any]:
    """A transformers depth-estimation model and its image processor (folder or hub id)."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    check_model_ref("depth model", ref)
    try:
        processor = AutoImageProcessor.from_pretrained(ref)
        model = AutoModelForDepthEstimation.from_pretrained(ref)
    except OSError as err:
        if Path(ref).expanduser().is_dir():
            raise UserError(f"depth model {ref}: not a depth-estimation model ({str(err)[:120]})") from None
        raise hub_error("depth model", ref, err) from None
    except (ValueError, KeyError) as err:
        raise UserError(f"depth model {ref}: not a depth-estimation model ({type(err).__name__})") from None
    return processor, model.to(device).eval()  # type: ignore[arg-type]


@torch.no_grad()
def estimate_depth(image: Image.Image, depth_model: tuple[Any, Any], size: tuple[int, int]) -> Image.Image:
    """The depth map of a photo at ``size``, normalised to 0..255 grey (white = near), as depth ControlNets take."""
    processor, model = depth_model
    inputs = processor(images=image, return_tensors="pt").to(model.device)
    depth = model(**inputs).predicted_depth.float()
    depth = F.interpolate(depth[:, None], size=(size[1], size[0]), mode="bicubic", align_corners=False)[0, 0]
    depth = depth - depth.min()
    depth = depth / depth.max().clamp(min=1e-12)
    return Image.fromarray((depth.cpu().numpy() * 255).round().astype(np.uint8)).convert("RGB")


def controlnet_ref(kind: str, family: Family, given: str | None) -> str:
    """The ControlNet to use: the one given, else the family's default for this control kind."""
    if given is not None:
        return given
    if kind not in family.default_controlnets:
        raise UserError(f"--control {kind}: give the ControlNet for this control image with --controlnet")
    return family.default_controlnets[kind]


def load_controlnet(ref: str, family: Family, denoiser: Any, dtype: torch.dtype) -> Any:
    """Load a ControlNet of the family's class (diffusers folder or hub id) and check that it fits the denoiser."""
    import diffusers

    check_controlnet_ref(ref)
    cls = getattr(diffusers, family.controlnet_class)
    path = Path(ref).expanduser()
    if path.is_dir():
        try:
            controlnet = cls.from_pretrained(str(path), dtype=dtype)
        except Exception as err:  # a broken folder is a user error, whatever diffusers raised
            raise UserError(f"controlnet {ref}: not a loadable ControlNet ({type(err).__name__})") from None
    else:
        try:
            controlnet = cls.from_pretrained(ref, dtype=dtype)
        except OSError as err:
            raise hub_error("controlnet", ref, err) from None
    if not family.controlnet_fits(controlnet, denoiser):
        raise UserError(f"controlnet {ref} was made for another kind of model (not {family.name})")
    if getattr(controlnet, "encoder_hid_proj", None) is not None:
        raise UserError(f"controlnet {ref} carries an image projection; image tokens must not reach a ControlNet")
    return controlnet.eval()
