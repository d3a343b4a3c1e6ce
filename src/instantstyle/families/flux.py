"""FLUX.1 (dev) with XLabs' flux-ip-adapter (v1: 4 image tokens, v2: 16).

XLabs' adapter projects CLIP ViT-L/14 ``image_embeds`` to image tokens and adds an image attention to the
19 double-stream blocks (``transformer_blocks.N``); the 38 single-stream blocks get none. The embeddings
are global CLIP ones, so content subtraction works with the CLIP text tower with projection of the image
encoder's own repository. FLUX.1-dev is guidance-distilled: ``--guidance`` is an input of the model (one
forward per step, no negative); ``--true-cfg`` above 1 adds real classifier-free guidance (a second forward
with the negative prompt and the negative image, the encoding of a black image, as diffusers and XLabs do).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from . import dit

if TYPE_CHECKING:
    import torch

    from ..core.adapter import AdapterWeights
    from ..core.request import Request

#: XLabs' key names (flat ``.safetensors``): the image projection and each double block's k/v projections.
PROJECTION_PREFIX = "ip_adapter_proj_model."
BLOCK_PREFIX = "double_blocks."
#: diffusers reads XLabs files with 4 image tokens, or 16 when the projection has 16 x 4096 rows (v2).
TOKENS = (4, 16)


def matches(class_name: str, config: Mapping[str, Any]) -> bool:
    return class_name == "FluxTransformer2DModel"


def matches_checkpoint(keys: Sequence[str]) -> bool:
    """FLUX checkpoints (BFL's layout) hold double-stream blocks with q/k norms."""
    return any(k.endswith("double_blocks.0.img_attn.norm.key_norm.scale") for k in keys)


def read_xlabs(path: Any, tensors: Mapping[str, torch.Tensor]) -> AdapterWeights | None:
    """An XLabs FLUX IP-Adapter file read into diffusers' names (as ``FluxIPAdapterMixin.load_ip_adapter`` reads
    it): ``image_proj`` ``proj``/``norm`` and ``ip_adapter`` ``{block}.to_k_ip`` / ``to_v_ip``; ``None`` when the
    tensors are not in XLabs' layout."""
    from ..core.adapter import AdapterWeights

    if not (any(k.startswith(PROJECTION_PREFIX) for k in tensors) and any(k.startswith(BLOCK_PREFIX) for k in tensors)):
        return None
    proj: dict[str, torch.Tensor] = {}
    layers: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        if key.startswith(PROJECTION_PREFIX):
            proj[key.removeprefix(PROJECTION_PREFIX)] = tensor
        elif key.startswith(BLOCK_PREFIX):
            name = (key.removeprefix(BLOCK_PREFIX).replace("processor.", "")
                    .replace("ip_adapter_double_stream_k_proj", "to_k_ip")
                    .replace("ip_adapter_double_stream_v_proj", "to_v_ip"))
            layers[name] = tensor
    if not {"proj.weight", "norm.weight"} <= set(proj):
        raise UserError(f"adapter {path}: an XLabs FLUX adapter without its image projection (proj, norm)")
    width = int(proj["norm.weight"].shape[0])
    return AdapterWeights(
        str(Path(path)), "global", int(proj["proj.weight"].shape[1]), width,
        sum(1 for k in layers if k.endswith(".to_k_ip.weight")), {"image_proj": proj, "ip_adapter": layers},
    )


def load_adapters(pipe: Any, state_dicts: Sequence[Mapping[str, Any]]) -> None:
    """diffusers' ``load_ip_adapter`` with the state dicts in memory and no image encoder (we bring our own)."""
    from ..files.logs import quiet

    dicts = [{"image_proj": sd["image_proj"], "ip_adapter": sd["ip_adapter"]} for sd in state_dicts]
    with quiet("diffusers.loaders.ip_adapter"):  # it warns that no image encoder is loaded
        pipe.load_ip_adapter(dicts, weight_name=[""] * len(dicts), image_encoder_pretrained_model_name_or_path=None)


def embeds_kwargs(
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], cfg: bool, device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    """Per slot (1, n, width) CLIP ``image_embeds``; the negatives go separately (``negative_ip_adapter_image_embeds``,
    used by true CFG only). diffusers repeats them per image."""
    return {
        "ip_adapter_image_embeds": [style[None].to(device, dtype) for style, _ in pairs],
        "negative_ip_adapter_image_embeds": [negative[None].to(device, dtype) for _, negative in pairs],
    }


def text_only_processor() -> Any:
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

    return FluxAttnProcessor()  # it takes the image features and ignores them, as diffusers means it to


def adapter_misfit(adapter: AdapterWeights, transformer: Any) -> str | None:
    """An XLabs adapter has one k/v pair per double-stream block, reading tokens as wide as the T5 text."""
    config = transformer.config
    layers = dit.joint_layers(transformer.attn_processors)
    proj = adapter.state_dict.get("image_proj", {}).get("proj.weight")
    if proj is not None and proj.shape[0] not in [t * adapter.cross_attention_dim for t in TOKENS]:
        tokens = proj.shape[0] / adapter.cross_attention_dim
        return f"its projection makes {tokens:g} image tokens (diffusers reads 4 or 16)"
    if (adapter.kind == "global" and adapter.num_layers == len(layers)
            and adapter.cross_attention_dim == config.joint_attention_dim):
        return None
    return (f"it has {adapter.num_layers} layers reading {adapter.cross_attention_dim}-wide tokens, the model "
            f"{len(layers)} double-stream blocks reading {config.joint_attention_dim}-wide text")


def native_size(pipe: Any) -> int:
    """The model's own size, from its VAE's ``sample_size`` (1024 for FLUX.1-dev): FluxPipeline's default (128
    latents) is a constant that would give a tiny model 1024 px too."""
    size = getattr(pipe.vae.config, "sample_size", None)
    return int(size) if isinstance(size, int) else dit.native_size(pipe)


def check_request(request: Request, transformer: Any) -> None:
    dit.check_common(request, "FLUX models", single_adapter=False)
    if request.negative_prompt and request.true_cfg <= 1:
        raise UserError("FLUX.1 is guidance-distilled: a negative prompt acts only with true CFG (--true-cfg above "
                        "1, e.g. 4)")
    if transformer.config.in_channels != 64:
        raise UserError(f"the model's transformer takes {transformer.config.in_channels} channels; only FLUX "
                        "text-to-image models (64) are supported (not Fill, Canny/Depth or Kontext)")


def guidance_kwargs(request: Request) -> dict[str, Any]:
    """``guidance_scale`` is the distilled guidance (a model input); ``true_cfg_scale`` above 1 runs real CFG, which
    diffusers does only when a negative prompt is given, so the empty one is passed then."""
    true_cfg = request.true_cfg > 1
    return {"guidance_scale": request.guidance, "true_cfg_scale": request.true_cfg,
            "negative_prompt": request.negative_prompt if true_cfg else None}


def guides(pipe: Any, guidance: float) -> bool:
    """The image negative never goes in one batch with the positive (see ``embeds_kwargs``)."""
    return False


def draw_latents(pipe: Any, request: Request, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The starting noise exactly as ``FluxPipeline.prepare_latents`` draws it from the seed, packed into 2x2
    patches as it takes ``latents``."""
    assert request.width and request.height
    channels = pipe.transformer.config.in_channels // 4
    factor = pipe.vae_scale_factor
    noise = dit.draw_noise(request, channels, factor, device, dtype)
    return pipe._pack_latents(noise, request.num_images, channels, request.height // factor,  # noqa: SLF001
                              request.width // factor)


def blocks_note(transformer: Any) -> str:
    single = transformer.config.num_single_layers
    return (f"single_transformer_blocks.0-{single - 1} ({single} single-stream blocks): not reached, XLabs "
            "IP-Adapters hold weights for the double-stream blocks only")


FAMILY = replace(
    dit.BASE,
    name="flux",
    denoiser_class="FluxTransformer2DModel",
    matches=matches,
    matches_checkpoint=matches_checkpoint,
    text_pipeline="FluxPipeline",
    ip_processor="FluxIPAdapterAttnProcessor",
    load_adapters=load_adapters,
    embeds_kwargs=embeds_kwargs,
    text_only_processor=text_only_processor,
    adapter_misfit=adapter_misfit,
    # No content_towers: FLUX's text_encoder is CLIP ViT-L's text tower without its projection; the content tower
    # comes from the image encoder's own CLIP repository (StylePipeline.content_text_tower).
    controlnet_class="FluxControlNetModel",
    default_controlnets={
        "canny": "InstantX/FLUX.1-dev-Controlnet-Canny",
        "depth": "Shakker-Labs/FLUX.1-dev-ControlNet-Depth",
    },
    native_size=native_size,
    check_request=check_request,
    guides=guides,
    draw_latents=draw_latents,
    adapter_reader=read_xlabs,
    image_encoders=("openai/clip-vit-large-patch14",),
    negative_image="black",
    guidance_kwargs=guidance_kwargs,
    takes_true_cfg=True,
    blocks_note=blocks_note,
    default_adapter="XLabs-AI/flux-ip-adapter/ip_adapter.safetensors",
    known_models=("black-forest-labs/FLUX.1-dev",),
)
