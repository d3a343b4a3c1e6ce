"""What the UNet families (SD1.5, SDXL, Kolors) share: ``BASE``, a family with their layer names, block grouping,
checks and noise, which each of them ``dataclasses.replace``s with what differs.

A UNet's IP-Adapter layers are its cross-attention layers (``...attn2``); they group into attention
blocks (``up_blocks.0.attentions.1``, the unit InstantStyle targets) and those into top-level blocks
(``up_blocks.0``, ``mid_block``). Adapters are in h94's format, loaded by diffusers' ``load_ip_adapter``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from . import Family, never

if TYPE_CHECKING:
    import torch

    from ..core.adapter import AdapterWeights
    from ..core.request import Request

def is_unet(class_name: str) -> bool:
    return class_name == "UNet2DConditionModel"


def cross_attention_layers(processor_names: Iterable[str]) -> list[str]:
    """The cross-attention layers (``...attn2``) of a UNet, in ``unet.attn_processors`` order."""
    return [n.removesuffix(".processor") for n in processor_names if n.endswith("attn2.processor")]


def attention_block(layer: str) -> str:
    """The attention block a layer belongs to: ``up_blocks.0.attentions.1`` for its transformer layers."""
    return layer.split(".transformer_blocks.")[0]


def top_block(block: str) -> str:
    """The top-level block of an attention block: ``up_blocks.0`` or ``mid_block``."""
    parts = block.split(".")
    return parts[0] if parts[0] == "mid_block" else ".".join(parts[:2])


def text_only_processor() -> Any:
    from ..core.processors import TextOnlyAttnProcessor

    return TextOnlyAttnProcessor()


def adapter_misfit(adapter: AdapterWeights, unet: Any) -> str | None:
    """An h94 adapter has one to_k_ip/to_v_ip pair per cross-attention layer, as wide as the UNet's text."""
    layers = cross_attention_layers(unet.attn_processors)
    dim = unet.config.cross_attention_dim
    if adapter.num_layers == len(layers) and adapter.cross_attention_dim == dim:
        return None
    return (f"it has {adapter.num_layers} layers of width {adapter.cross_attention_dim}, the model "
            f"{len(layers)} cross-attention layers of width {dim}")


def controlnet_fits(controlnet: Any, unet: Any) -> bool:
    """A ControlNet copied from another UNet family has another text width or added conditioning."""
    mine, want = controlnet.config, unet.config
    return (mine.cross_attention_dim, mine.addition_embed_type) == (want.cross_attention_dim, want.addition_embed_type)


def load_adapters(pipe: Any, state_dicts: Sequence[Mapping[str, Any]]) -> None:
    """diffusers' ``load_ip_adapter`` with in-memory state dicts and no image encoder (we bring our own)."""
    from ..files.logs import quiet

    with quiet("diffusers.loaders.ip_adapter"):  # it warns that no image encoder is loaded
        pipe.load_ip_adapter(list(state_dicts), subfolder=[""] * len(state_dicts),
                             weight_name=[""] * len(state_dicts), image_encoder_folder=None)


def embeds_kwargs(
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], cfg: bool, device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    """``ip_adapter_image_embeds``: per slot a tensor (2, n, ...) under CFG, negative half first, else (1, n, ...);
    diffusers repeats it per image."""
    import torch

    slots = [torch.cat([negative[None], style[None]]) if cfg else style[None] for style, negative in pairs]
    return {"ip_adapter_image_embeds": [slot.to(device, dtype) for slot in slots]}


def native_size(pipe: Any) -> int:
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)


def check_request(request: Request, unet: Any) -> None:
    """An inpainting UNet (9 input channels) needs an init image and a mask; other widths are not SD UNets; true
    CFG is for guidance-distilled models."""
    if request.true_cfg != 1:
        raise UserError("--true-cfg is for guidance-distilled models (FLUX.1-dev); this model runs classifier-free "
                        "guidance at --guidance")
    if unet.config.in_channels == 9 and request.mode != "inpaint":
        raise UserError("this is an inpainting model: give --init-image and --mask")
    if unet.config.in_channels not in (4, 9):
        raise UserError(f"the model's UNet takes {unet.config.in_channels} channels; only 4 (or 9 for inpainting)")


def guides(pipe: Any, guidance: float) -> bool:
    """diffusers' own rule: guidance above 1, unless the UNet is guidance-distilled (``time_cond_proj_dim``)."""
    return guidance > 1 and pipe.unet.config.time_cond_proj_dim is None


def draw_latents(pipe: Any, request: Request, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A text-to-image request's starting noise, drawn as its pipeline draws it from the request's seed."""
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    assert request.seed is not None and request.width and request.height
    factor = pipe.vae_scale_factor
    shape = (request.num_images, pipe.unet.config.in_channels, request.height // factor, request.width // factor)
    return randn_tensor(shape, generator=torch.Generator("cpu").manual_seed(request.seed), device=device, dtype=dtype)


#: What every UNet family shares; a family replaces its name, matcher and pipeline, and what else differs. Not a
#: family itself: it matches no denoiser.
BASE = Family(
    name="unet",
    denoiser="unet",
    denoiser_class="UNet2DConditionModel",
    matches=never,
    text_pipeline="",  # each family names its own
    presets={"all": ("down_blocks", "mid_block", "up_blocks")},
    injectable_layers=cross_attention_layers,
    attention_block=attention_block,
    top_block=top_block,
    ip_processor="IPAdapterAttnProcessor2_0",
    load_adapters=load_adapters,
    embeds_kwargs=embeds_kwargs,
    text_only_processor=text_only_processor,
    adapter_misfit=adapter_misfit,
    controlnet_class="ControlNetModel",
    controlnet_fits=controlnet_fits,
    native_size=native_size,
    check_request=check_request,
    guides=guides,
    draw_latents=draw_latents,
)
