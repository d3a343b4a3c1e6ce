"""What the diffusion-transformer families (SD3.5, FLUX) share: ``BASE``, a family with their layer names, block
grouping, presets, size grid and precision, which each of them ``dataclasses.replace``s with what differs (a DiT's
IP-Adapter loading, processor and embeddings differ per model, so ``BASE`` has none: a family gives its own).

A DiT's IP-Adapter layers are the joint attention layers of its ``transformer_blocks.N`` (one per block:
``transformer_blocks.N.attn``); a block is its own top-level block. Block specs name ``transformer_blocks.N``,
a range ``transformer_blocks.4-9`` or ``all``. No block has been measured to carry style or layout in these
models, so only ``all`` is a preset (``instantstyle probe-blocks`` finds one; ``--blocks @FILE:NAME`` uses it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn

from ..errors import UserError
from . import Family, never

if TYPE_CHECKING:
    import torch

    from ..core.request import Request

#: The one preset: every block the adapter reaches.
PRESETS: Mapping[str, tuple[str, ...]] = {"all": ("transformer_blocks",)}
#: Height and width must be multiples of this (VAE factor 8 times the 2x2 patches), or diffusers resizes/refuses.
SIZE_MULTIPLE = 16


def joint_layers(processor_names: Iterable[str]) -> list[str]:
    """The joint attention layers of ``transformer_blocks.N`` (``...attn``), in ``transformer.attn_processors``
    order (FLUX's single-stream blocks and SD3's resampler attentions are not among them)."""
    return [n.removesuffix(".processor") for n in processor_names
            if n.startswith("transformer_blocks.") and n.endswith(".processor")]


def attention_block(layer: str) -> str:
    """The block a layer belongs to: ``transformer_blocks.4`` for ``transformer_blocks.4.attn``."""
    return layer.rsplit(".", 1)[0]


def top_block(block: str) -> str:
    """A transformer block is its own top-level block."""
    return block


def check_common(request: Request, what: str, single_adapter: bool) -> None:
    """What no DiT family here can do: region masks (SD3's processor takes none; FLUX's accepts
    ``ip_adapter_masks`` and never reads them), a composition image (it needs a measured layout block),
    a ControlNet with img2img or inpainting (diffusers has no such pipeline with IP-Adapter support), SD
    samplers, sizes off the 16-pixel grid; with ``single_adapter``, further adapters."""
    if request.regions or any(use.regions for use in request.adapters):
        raise UserError(f"regions (--region) are not available for {what}: diffusers' IP-Adapter processor "
                        "for it applies no attention masks")
    if request.composition is not None:
        raise UserError(f"--composition is not available for {what}: it needs a layout block, and none has been "
                        "measured for this model (find one with probe-blocks)")
    if request.control is not None and request.mode != "text":
        raise UserError(f"a ControlNet with --init-image is not available for {what}: diffusers' ControlNet "
                        f"{request.mode} pipeline for it takes no IP-Adapter")
    if single_adapter and request.adapters:
        raise UserError(f"further adapters are not available for {what}: its IP-Adapter processor holds one "
                        "adapter")
    if request.scheduler is not None:
        raise UserError(f"--scheduler is not available for {what}: it is a flow-matching model and keeps its own "
                        "sampler")
    for name in ("width", "height"):
        value = getattr(request, name)
        if value is not None and value % SIZE_MULTIPLE:
            raise UserError(f"{name} must be a multiple of {SIZE_MULTIPLE} for {what}, got {value}")


def draw_noise(request: Request, channels: int, factor: int, device: torch.device,
               dtype: torch.dtype) -> torch.Tensor:
    """A request's starting noise (num_images, channels, height / factor, width / factor), drawn from its seed as
    the pipeline draws it (diffusers' ``randn_tensor`` with a CPU generator)."""
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    assert request.seed is not None and request.width and request.height
    shape = (request.num_images, channels, request.height // factor, request.width // factor)
    return randn_tensor(shape, generator=torch.Generator("cpu").manual_seed(request.seed), device=device, dtype=dtype)


def controlnet_fits(controlnet: Any, transformer: Any) -> bool:
    """Whether a DiT ControlNet was made for this transformer: same width and text width."""
    mine, want = controlnet.config, transformer.config
    return (mine.num_attention_heads * mine.attention_head_dim == want.num_attention_heads * want.attention_head_dim
            and mine.joint_attention_dim == want.joint_attention_dim)


def native_size(pipe: Any) -> int:
    """The pipeline's default side: its ``default_sample_size`` latents."""
    return int(pipe.default_sample_size * pipe.vae_scale_factor)


def guides(pipe: Any, guidance: float) -> bool:
    """diffusers' rule: classifier-free guidance above 1."""
    return guidance > 1


def own(field: str) -> Callable[..., NoReturn]:
    """A ``BASE`` field each DiT family must give itself (its adapter format, processor and embeddings differ)."""

    def missing(*_: Any) -> NoReturn:
        raise NotImplementedError(f"a family built on dit.BASE must give its own {field}")

    return missing


#: What every DiT family shares; a family replaces its name, matcher, classes, pipeline and adapter handling (the
#: ``own`` fields), and what else differs. Not a family itself: it matches no denoiser.
BASE = Family(
    name="dit",
    denoiser="transformer",
    denoiser_class="",  # each family names its own, as its ip_processor and controlnet_class
    matches=never,
    text_pipeline="",
    presets=PRESETS,
    injectable_layers=joint_layers,
    attention_block=attention_block,
    top_block=top_block,
    ip_processor="",
    load_adapters=own("load_adapters"),
    embeds_kwargs=own("embeds_kwargs"),
    text_only_processor=None,
    adapter_misfit=own("adapter_misfit"),
    controlnet_class="",
    controlnet_fits=controlnet_fits,
    native_size=native_size,
    check_request=own("check_request"),
    guides=guides,
    default_blocks="all",
    size_multiple=SIZE_MULTIPLE,
    gpu_dtype="bfloat16",
)
