"""ControlNet inputs: the control image (canny edges computed here, a depth map or a ready image) and the model.

Canny is computed in torch (no OpenCV): Gaussian blur, Sobel gradients, non-maximum suppression and
hysteresis between OpenCV's usual thresholds 100 and 200, as the original InstantStyle script does.
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
    """Canny edges of an image as white lines on black (RGB), the input canny ControlNets were trained on."""
    grey = torch.from_numpy(np.asarray(image.convert("L"), dtype=np.float32))[None, None]
    x = torch.arange(5, dtype=torch.float32) - 2
    g = torch.exp(-(x**2) / (2 * 1.4**2))
    g = g / g.sum()
    grey = F.conv2d(F.pad(grey, (2, 2, 2, 2), mode="replicate"), (g[:, None] * g[None, :])[None, None])
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    padded = F.pad(grey, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(padded, sobel[None, None])[0, 0]
    gy = F.conv2d(padded, sobel.T[None, None])[0, 0]
    magnitude = torch.hypot(gx, gy)
    # Non-maximum suppression along the gradient direction, quantised to 0/45/90/135 degrees.
    angle = (torch.rad2deg(torch.atan2(gy, gx)) + 180.0) % 180.0
    sector = (((angle + 22.5) // 45) % 4).long()
    offsets = [(0, 1), (1, 1), (1, 0), (1, -1)]  # (dy, dx) for 0, 45, 90, 135 degrees
    m = F.pad(magnitude, (1, 1, 1, 1))
    h, w = magnitude.shape
    keep = torch.zeros_like(magnitude, dtype=torch.bool)
    for i, (dy, dx) in enumerate(offsets):
        ahead = m[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        behind = m[1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w]
        keep |= (sector == i) & (magnitude >= ahead) & (magnitude >= behind)
    thin = magnitude * keep
    strong, weak = thin >= high, thin >= low
    edges = strong
    while True:  # hysteresis: weak pixels join when they touch an edge
        grown = F.max_pool2d(edges[None, None].float(), 3, 1, 1)[0, 0].bool() & weak
        if torch.equal(grown, edges):
            break
        edges = grown
    out = edges.numpy().astype(np.uint8) * 255
    return Image.fromarray(out).convert("RGB")


def control_image(kind: str, source: str, size: tuple[int, int], depth_model: Any | None = None,
                  max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """The conditioning image for ``--control kind`` at the output size: canny edges of ``source``, its
    depth map by ``depth_model``, or ``source`` itself (a depth map or a ready control image)."""
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
