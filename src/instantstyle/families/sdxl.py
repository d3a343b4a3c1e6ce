"""Stable Diffusion XL: the family InstantStyle was made for (paper, sec. 4)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..modes.hidiffusion_settings import FEATURE, HiDiffusionSettings, Phases
from . import unet

if TYPE_CHECKING:
    import torch

#: HiDiffusion (see ``hidiffusion``) on SDXL base: its second level (640 channels, the highest resolution with
#: attention). Up to a 4096 px side (latent 512) the authors' aggressive variant with T1 = 0.4 (0.5 with a
#: ControlNet in text-to-image; not aggressive for inpainting), above it T1 = 0.7, T2 = 0.3.
HIDIFFUSION = HiDiffusionSettings(
    dilated_conv="down_blocks.1.downsamplers.0.conv",
    pooled_block="down_blocks.1",
    restored_block="up_blocks.1",
    window_blocks=("down_blocks.1.attentions", "up_blocks.1.attentions"),
    large_latent=512,
    normal=Phases(pool=0.4, dilate=0.0, aggressive=True),
    large=Phases(pool=0.7, dilate=0.3),
    inpaint=Phases(pool=0.4, dilate=0.0),
    text_controlnet=Phases(pool=0.5, dilate=0.0, aggressive=True),
)


def matches(class_name: str, config: Mapping[str, Any]) -> bool:
    """SDXL's UNet takes text+time added conditioning (pooled text embedding and size ids) and the text towers'
    states as they are: no ``encoder_hid_dim`` (Kolors' UNet, otherwise alike, projects ChatGLM's states first)."""
    return (unet.is_unet(class_name) and config.get("addition_embed_type") == "text_time"
            and config.get("encoder_hid_dim") is None)


def matches_checkpoint(keys: Sequence[str]) -> bool:
    """SDXL checkpoints hold a second text embedder (OpenCLIP bigG)."""
    return any(k.startswith("conditioner.embedders.1.") for k in keys)


def encode_prompts(
    pipe: Any, prompts: list[str], negatives: list[str] | None, device: torch.device, cfg: bool
) -> dict[str, Any]:
    """Both text towers' embeddings and the pooled ones, by the pipeline's own ``encode_prompt`` with the arguments
    its call uses (one image per prompt: the call repeats them per image, as it does for its own)."""
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
        prompt=prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=cfg,
        negative_prompt=negatives)
    return {"prompt_embeds": embeds, "negative_prompt_embeds": negative, "pooled_prompt_embeds": pooled,
            "negative_pooled_prompt_embeds": negative_pooled}


FAMILY = replace(
    unet.BASE,
    name="sdxl",
    matches=matches,
    matches_checkpoint=matches_checkpoint,
    text_pipeline="StableDiffusionXLPipeline",
    presets={
        "style": ("up_blocks.0.attentions.1",),
        "layout": ("down_blocks.2.attentions.1",),
        "style+layout": ("up_blocks.0.attentions.1", "down_blocks.2.attentions.1"),
        **unet.BASE.presets,
    },
    # text_encoder_2 is OpenCLIP ViT-bigG's text tower: the space of the ViT-bigG image encoder (ip-adapter_sdxl).
    content_towers=(("tokenizer_2", "text_encoder_2"),),
    default_controlnets={
        "canny": "diffusers/controlnet-canny-sdxl-1.0",
        "depth": "diffusers/controlnet-depth-sdxl-1.0",
        "tile": "xinsir/controlnet-tile-sdxl-1.0",
    },
    encode_prompts=encode_prompts,
    # restyle: InstantStyle-Plus (modes.restyle); csgo: CSGO's checkpoints are trained for SDXL (core.csgo)
    features={FEATURE: HIDIFFUSION, "restyle": True, "csgo": True},
    default_adapter="h94/IP-Adapter/sdxl_models/ip-adapter_sdxl.safetensors",
    known_models=("stabilityai/stable-diffusion-xl-base-1.0",),
)
