"""Kolors (Kwai-Kolors) with Kwai-Kolors' IP-Adapter-Plus: SDXL's UNet reading ChatGLM3's text.

Kolors' UNet is SDXL's topology, with the text encoder's states (4096 wide) projected to the UNet's width (2048)
first: ``encoder_hid_proj``, diffusers' ``text_proj``, which diffusers keeps aside while IP-Adapters are loaded
(``text_encoder_hid_proj``) and puts back when they are unloaded. Kolors-IP-Adapter-Plus is an h94-format plus
adapter (a Resampler over the penultimate patch features of CLIP ViT-L/14 at 336 px, the encoder in
``image_encoder/`` beside the weights), so a content prompt or image is refused, as for every plus adapter. The
blocks are SDXL's (the same UNet), not measured on Kolors; HiDiffusion has no settings for it. diffusers has Kolors
text-to-image and img2img pipelines, no inpainting or ControlNet one: those are refused before loading.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from . import sdxl, unet

if TYPE_CHECKING:
    from ..core.request import Request


def matches(class_name: str, config: Mapping[str, Any]) -> bool:
    """SDXL's text+time conditioning, and the text states projected by the UNet (``encoder_hid_dim``: ChatGLM's
    width; the projection's type becomes ``ip_image_proj`` while an adapter is loaded, its width stays)."""
    return (unet.is_unet(class_name) and config.get("addition_embed_type") == "text_time"
            and config.get("encoder_hid_dim") is not None)


def load_adapters(pipe: Any, state_dicts: Sequence[Mapping[str, Any]]) -> None:
    """As every UNet family (diffusers' ``load_ip_adapter``), after clearing what ``unload_ip_adapter`` leaves on a
    Kolors UNet: ``text_encoder_hid_proj`` set to ``None``, which would make this load drop the text projection (it
    keeps the projection aside only when that attribute is absent), so any reload (a further adapter, layers that
    were pruned) would feed ChatGLM's states unprojected to the UNet."""
    if getattr(pipe.unet, "text_encoder_hid_proj", "absent") is None:
        del pipe.unet.text_encoder_hid_proj
    unet.load_adapters(pipe, state_dicts)


def check_request(request: Request, denoiser: Any) -> None:
    """What every UNet family refuses, and the modes diffusers has no Kolors pipeline for."""
    unet.check_request(request, denoiser)
    if request.mode == "inpaint":
        raise UserError("inpainting (--mask) is not available for Kolors models: diffusers has no Kolors inpainting "
                        "pipeline (img2img with --init-image alone is)")
    if request.control is not None:
        raise UserError("--control is not available for Kolors models: diffusers has no Kolors ControlNet pipeline")


FAMILY = replace(
    unet.BASE,
    name="kolors",
    matches=matches,
    text_pipeline="KolorsPipeline",
    presets=sdxl.FAMILY.presets,  # SDXL's UNet: its style and layout blocks
    load_adapters=load_adapters,
    check_request=check_request,
    default_adapter="Kwai-Kolors/Kolors-IP-Adapter-Plus/ip_adapter_plus_general.bin",
    known_models=("Kwai-Kolors/Kolors-diffusers",),
    # No encode_prompts: the pipelines encode their prompts in the call (KolorsImg2ImgPipeline drops pre-encoded
    # pooled prompts in diffusers 0.42), so under a memory budget ChatGLM stays on the device, as SD3's and FLUX's T5.
)
