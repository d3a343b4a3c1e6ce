"""Stable Diffusion 3.5 (Large) with InstantX's SD3.5-Large-IP-Adapter.

The adapter reads SigLIP so400m's penultimate patch features through a time-conditioned resampler and adds
an image attention to every joint block (``SD3IPAdapterJointAttnProcessor2_0``: one adapter, a float scale).
The features are patch tokens, not a point in a joint image-text space, so content subtraction is refused
as for SDXL's plus adapters. The CFG negative is zeros (diffusers' SD3 pipeline does the same).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from . import dit

if TYPE_CHECKING:
    import torch

    from ..core.adapter import AdapterWeights
    from ..core.request import Request

#: The resampler's timestep embedding: what tells InstantX's file from an h94 plus adapter.
TIME_CONDITIONED_KEY = "time_embedding.linear_1.weight"


def matches(class_name: str, config: Mapping[str, Any]) -> bool:
    return class_name == "SD3Transformer2DModel"


def matches_checkpoint(keys: Sequence[str]) -> bool:
    """SD3 checkpoints (Stability's layout) hold MMDiT joint blocks with an ``x_block`` per block."""
    return any("joint_blocks." in k and ".x_block." in k for k in keys)


def load_adapters(pipe: Any, state_dicts: Sequence[Mapping[str, Any]]) -> None:
    """diffusers' ``load_ip_adapter`` with the state dict in memory and no image encoder (we bring our own)."""
    from ..files.logs import quiet

    if len(state_dicts) != 1:
        raise UserError("SD3 models take one IP-Adapter at a time")
    with quiet("diffusers.loaders.ip_adapter"):  # it warns that no image encoder is loaded
        pipe.load_ip_adapter(dict(state_dicts[0]), image_encoder_folder=None)


def embeds_kwargs(
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], cfg: bool, device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    """``ip_adapter_image_embeds``: ONE tensor of patch features (2, tokens, width) under CFG, negative half first,
    else (1, tokens, width); diffusers repeats it per image."""
    import torch

    if len(pairs) != 1:
        raise UserError("SD3 models take one image-feature slot")
    style, negative = pairs[0]
    embeds = torch.cat([negative, style]) if cfg else style
    return {"ip_adapter_image_embeds": embeds.to(device, dtype)}


def text_only_processor() -> Any:
    from ..core.processors import TextOnlyJointAttnProcessor

    return TextOnlyJointAttnProcessor()


def adapter_misfit(adapter: AdapterWeights, transformer: Any) -> str | None:
    """InstantX's file: a time-conditioned resampler and one processor per joint block, as wide as the blocks."""
    config = transformer.config
    width = config.num_attention_heads * config.attention_head_dim
    layers = dit.joint_layers(transformer.attn_processors)
    if adapter.state_dict and TIME_CONDITIONED_KEY not in adapter.state_dict.get("image_proj", {}):
        return "it is not a time-conditioned SD3 adapter (InstantX's SD3.5-Large-IP-Adapter layout)"
    if adapter.kind == "plus" and adapter.num_layers == len(layers) and adapter.cross_attention_dim == width:
        return None
    return (f"it has {adapter.num_layers} layers of width {adapter.cross_attention_dim}, the model "
            f"{len(layers)} joint blocks of width {width}")


def controlnet_fits(controlnet: Any, transformer: Any) -> bool:
    """Same widths, and not the inpainting ControlNet (extra mask channels), which takes other inputs."""
    return dit.controlnet_fits(controlnet, transformer) and not controlnet.config.get("extra_conditioning_channels", 0)


def check_request(request: Request, transformer: Any) -> None:
    dit.check_common(request, "SD3 models", single_adapter=True)
    if request.content_prompt is not None or request.content_image is not None:
        flag = "--content-prompt" if request.content_prompt is not None else "--content-image"
        raise UserError(f"{flag}: SD3.5's adapter cannot subtract content (it reads SigLIP patch features, which "
                        "share no space with a text tower); use --blocks to limit it (instantstyle probe-blocks "
                        "finds the blocks that carry style)")
    if request.true_cfg != 1:
        raise UserError("--true-cfg is for guidance-distilled models (FLUX.1-dev); SD3.5 runs classifier-free "
                        "guidance at --guidance")
    if transformer.config.in_channels != 16:
        raise UserError(f"the model's transformer takes {transformer.config.in_channels} channels; only SD3 "
                        "text-to-image models (16) are supported")


def draw_latents(pipe: Any, request: Request, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The starting noise exactly as ``StableDiffusion3Pipeline.prepare_latents`` draws it from the seed."""
    return dit.draw_noise(request, pipe.transformer.config.in_channels, pipe.vae_scale_factor, device, dtype)


FAMILY = replace(
    dit.BASE,
    name="sd3",
    denoiser_class="SD3Transformer2DModel",
    matches=matches,
    matches_checkpoint=matches_checkpoint,
    text_pipeline="StableDiffusion3Pipeline",
    ip_processor="SD3IPAdapterJointAttnProcessor2_0",
    load_adapters=load_adapters,
    embeds_kwargs=embeds_kwargs,
    text_only_processor=text_only_processor,
    adapter_misfit=adapter_misfit,
    # No content_towers: SigLIP patch features share no space with a text tower. No default_controlnets: none tried,
    # give --controlnet (an SD3ControlNetModel folder or hub id).
    controlnet_class="SD3ControlNetModel",
    controlnet_fits=controlnet_fits,
    check_request=check_request,
    draw_latents=draw_latents,
    image_encoders=("google/siglip-so400m-patch14-384",),
    negative_image="zeros",
    default_adapter="InstantX/SD3.5-Large-IP-Adapter/ip-adapter.bin",
    known_models=("stabilityai/stable-diffusion-3.5-large", "stabilityai/stable-diffusion-3.5-large-turbo"),
)
