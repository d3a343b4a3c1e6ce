"""Tiny random-weight stand-ins for SD3.5 Large, FLUX.1-dev and their IP-Adapters (diffusion transformers).

Like ``fixtures.py`` for the UNets: the real topology (joint MMDiT blocks; FLUX's double- and
single-stream blocks; three text encoders with a T5 and its tokenizer; 16-channel VAEs; flow-matching
schedulers; SigLIP and CLIP ViT-L image encoders) and the real on-disk formats (``save_pretrained``
folders, the InstantX and XLabs adapter files with their published key names), only tiny. Every
artefact is written to disk so the code under test loads it through the public loaders
(``DiffusionPipeline.from_pretrained``, ``load_ip_adapter``) as it would the real checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .fixtures import (
    _make_content_image,
    _make_tokenizer,
    _randn,
    _save_adapter,
    _save_pipeline,
    _text_config,
    _tiny_vae,
)
from .fixtures import make_style_image as _make_style_image
from .trees import build_once

DIT_FIXTURE_VERSION = "1"
"""Bumped whenever the fixture contents change, so stale cached builds are rebuilt."""


# SD3.5 Large (real values in comments). Dimensions pairwise distinct where a mix-up would go unnoticed.
_SD3_LAYERS = 6  # 38 joint blocks
_SD3_HEAD_DIM = 8  # 64
_SD3_HEADS = 4  # 38
_SD3_INNER = _SD3_HEAD_DIM * _SD3_HEADS  # 2432: the width the IP-Adapter's keys/values and resampler output have
_SD3_TE1_HIDDEN = 16  # 768, CLIP ViT-L/14 text with projection
_SD3_TE2_HIDDEN = 24  # 1280, OpenCLIP bigG text with projection
_SD3_T5_DIM = 48  # 4096, T5 v1.1 XXL; must be >= the two CLIP widths together (SD3 pads CLIP to it)
_SD3_SAMPLE_SIZE = 8  # 128 latents: 64 px by default here, 1024 px for the real model
_SD3_POS_EMBED_MAX = 32  # 192 patches: up to 512 px here

# InstantX SD3.5-Large-IP-Adapter: a time-conditioned resampler over SigLIP's penultimate patch features.
_SIGLIP_HIDDEN = 40  # 1152 (so400m)
_SIGLIP_IMAGE = 32  # 384
_SIGLIP_PATCH = 8  # 14: 16 patches here, 729 for the real encoder
_RESAMPLER_HIDDEN = 32  # 1280
_RESAMPLER_QUERIES = 8  # 64 image tokens
_RESAMPLER_TIME_IN = 16  # 320 sinusoidal timestep channels
_RESAMPLER_DEPTH = 4  # diffusers always builds depth 4
_RESAMPLER_HEAD_DIM = 64  # diffusers infers heads as to_q rows // 64

# FLUX.1-dev.
_FLUX_DOUBLE = 4  # 19 double-stream blocks: where the XLabs adapter acts
_FLUX_SINGLE = 3  # 38 single-stream blocks
_FLUX_HEAD_DIM = 16  # 128; the three rotary axes add up to it
_FLUX_ROPE_AXES = (4, 6, 6)  # (16, 56, 56)
_FLUX_HEADS = 2  # 24
_FLUX_T5_DIM = 4096  # 4096, kept real: diffusers tells XLabs v2 (16 tokens) from v1 (4) by 16 * 4096 rows
_FLUX_T5_FF = 32  # 10240 (one layer, not 24: 512 tokens x 4096 wide is the fixture's main cost)

# CLIP ViT-L/14 (openai/clip-vit-large-patch14): FLUX's text_encoder and XLabs' image encoder are its towers.
_CLIP_L_TEXT_HIDDEN = 32  # 768
_CLIP_L_VISION_HIDDEN = 48  # 1024
_CLIP_L_PROJ = 24  # 768: image_embeds and the text tower's projection share it (content subtraction)
_XLABS_TOKENS = {"v1": 4, "v2": 16}

# T5 (sentencepiece Unigram) vocabulary written in code: specials first, as in the real spiece model.
_T5_WORDS = ("the", "cat", "dog", "photo", "of", "in", "style", "painting", "portrait", "house", "a")
_T5_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-"


@dataclass(frozen=True)
class TinyDiTModels:
    """Paths of one built DiT fixture tree (see ``build_tiny_dit_models``); adapter folders mirror hub repos."""

    root: Path
    sd3: Path  # diffusers folder: StableDiffusion3Pipeline in SD3.5 Large topology
    flux: Path  # diffusers folder: FluxPipeline in FLUX.1-dev topology (guidance-distilled)
    sd3_adapter_repo: Path  # mirrors InstantX/SD3.5-Large-IP-Adapter
    sd3_adapter: Path  # <repo>/ip-adapter.bin, the published name and layout
    siglip: Path  # mirrors google/siglip-so400m-patch14-384 (vision tower + SiglipImageProcessor)
    flux_adapter_repo: Path  # mirrors XLabs-AI/flux-ip-adapter
    flux_adapter: Path  # <repo>/ip_adapter.safetensors (4 image tokens)
    flux_adapter_v2_repo: Path  # mirrors XLabs-AI/flux-ip-adapter-v2
    flux_adapter_v2: Path  # <repo>/ip_adapter.safetensors (16 image tokens)
    clip_l: Path  # mirrors openai/clip-vit-large-patch14: CLIPModel (both towers), tokenizer, image processor
    style_image: Path
    content_image: Path


def _layout(root: Path) -> TinyDiTModels:
    """Where each artefact lives under ``root``."""
    instantx = root / "InstantX" / "SD3.5-Large-IP-Adapter"
    xlabs = root / "XLabs-AI" / "flux-ip-adapter"
    xlabs_v2 = root / "XLabs-AI" / "flux-ip-adapter-v2"
    return TinyDiTModels(
        root=root,
        sd3=root / "sd3.5-large",
        flux=root / "flux.1-dev",
        sd3_adapter_repo=instantx,
        sd3_adapter=instantx / "ip-adapter.bin",
        siglip=root / "google" / "siglip-so400m-patch14-384",
        flux_adapter_repo=xlabs,
        flux_adapter=xlabs / "ip_adapter.safetensors",
        flux_adapter_v2_repo=xlabs_v2,
        flux_adapter_v2=xlabs_v2 / "ip_adapter.safetensors",
        clip_l=root / "openai" / "clip-vit-large-patch14",
        style_image=root / "style.png",
        content_image=root / "content.png",
    )


# --------------------------------------------------------------------------------------------
# Weights


def _randomise(module: torch.nn.Module, gen: torch.Generator) -> torch.nn.Module:
    """Give every parameter fresh values from ``gen``: matrices ~ N(0, 1/fan_in) (as the model's own
    layers, so the image tokens weigh like text tokens), norm scales near 1, biases small."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim >= 2:
                param.copy_(_randn(gen, *param.shape, std=param.shape[-1] ** -0.5))
            elif name.endswith("weight"):
                param.copy_(1.0 + _randn(gen, *param.shape, std=0.05))
            else:
                param.copy_(_randn(gen, *param.shape, std=0.02))
    return module


def _prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}{key}": value.detach().clone().contiguous() for key, value in state.items()}


# --------------------------------------------------------------------------------------------
# Text encoders


def _t5_tokenizer():
    """A working T5 tokenizer built offline: a sentencepiece-style Unigram vocabulary (``<pad>`` 0,
    ``</s>`` 1, ``<unk>`` 2, then word pieces), through transformers' own T5 tokenizer class."""
    from transformers import T5TokenizerFast

    vocab: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(f"▁{w}", -1.0) for w in _T5_WORDS]
    vocab += [(f"▁{c}", -4.0) for c in _T5_CHARS] + [(c, -5.0) for c in _T5_CHARS]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=512)


def _t5_encoder(tokenizer, d_model: int, d_ff: int, layers: int, seed: int):
    """T5 v1.1 encoder (gated GELU, as SD3's and FLUX's text_encoder_3 / text_encoder_2), tiny depth."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=8,
        d_ff=d_ff,
        num_layers=layers,
        num_heads=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    return T5EncoderModel(config)


# --------------------------------------------------------------------------------------------
# Pipelines


def _flow_vae(scaling_factor: float, shift_factor: float, seed: int):
    """The shared tiny VAE topology (four levels: vae_scale_factor 8) with SD3's and FLUX's changes:
    16 latent channels, a shift factor, no quant convs."""
    from diffusers import AutoencoderKL

    config = _tiny_vae(scaling_factor=scaling_factor, force_upcast=True).config
    base = {k: v for k, v in config.items() if not k.startswith("_")}  # "_use_default_values" would win
    torch.manual_seed(seed)
    flow = {"latent_channels": 16, "shift_factor": shift_factor, "use_quant_conv": False, "use_post_quant_conv": False}
    return AutoencoderKL.from_config({**base, **flow})


def _build_sd3(dest: Path, seed: int) -> None:
    """Save a tiny StableDiffusion3Pipeline in SD3.5 Large topology (no image encoder, as the real repo)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    tokenizer, tokenizer_2, tokenizer_3 = _make_tokenizer(), _make_tokenizer(pad_token="!"), _t5_tokenizer()
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=_SD3_SAMPLE_SIZE,
        patch_size=2,
        in_channels=16,
        num_layers=_SD3_LAYERS,
        attention_head_dim=_SD3_HEAD_DIM,
        num_attention_heads=_SD3_HEADS,
        joint_attention_dim=_SD3_T5_DIM,
        caption_projection_dim=_SD3_INNER,
        pooled_projection_dim=_SD3_TE1_HIDDEN + _SD3_TE2_HIDDEN,
        out_channels=16,
        pos_embed_max_size=_SD3_POS_EMBED_MAX,
        qk_norm="rms_norm",
    )
    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModelWithProjection(_text_config(tokenizer, _SD3_TE1_HIDDEN, _SD3_TE1_HIDDEN))
    torch.manual_seed(seed + 2)
    text_encoder_2 = CLIPTextModelWithProjection(
        _text_config(tokenizer_2, _SD3_TE2_HIDDEN, _SD3_TE2_HIDDEN, hidden_act="gelu")
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=_flow_vae(scaling_factor=1.5305, shift_factor=0.0609, seed=seed + 3),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=_t5_encoder(tokenizer_3, _SD3_T5_DIM, 2 * _SD3_T5_DIM, 2, seed + 4),
        tokenizer_3=tokenizer_3,
    )
    _save_pipeline(pipe, dest)


def _build_flux(dest: Path, clip_l: Path, seed: int) -> None:
    """Save a tiny guidance-distilled FluxPipeline (FLUX.1-dev); its text_encoder is the CLIP-L fixture's
    text tower, as FLUX.1-dev's is openai/clip-vit-large-patch14's (without the projection)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer_2 = _t5_tokenizer()
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=_FLUX_DOUBLE,
        num_single_layers=_FLUX_SINGLE,
        attention_head_dim=_FLUX_HEAD_DIM,
        num_attention_heads=_FLUX_HEADS,
        joint_attention_dim=_FLUX_T5_DIM,
        pooled_projection_dim=_CLIP_L_TEXT_HIDDEN,
        guidance_embeds=True,
        axes_dims_rope=_FLUX_ROPE_AXES,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    pipe = FluxPipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=_flow_vae(scaling_factor=0.3611, shift_factor=0.1159, seed=seed + 1),
        text_encoder=CLIPTextModel.from_pretrained(str(clip_l)),
        tokenizer=CLIPTokenizer.from_pretrained(str(clip_l)),
        text_encoder_2=_t5_encoder(tokenizer_2, _FLUX_T5_DIM, _FLUX_T5_FF, 1, seed + 2),
        tokenizer_2=tokenizer_2,
    )
    _save_pipeline(pipe, dest)


# --------------------------------------------------------------------------------------------
# Image encoders


def _build_clip_l(dest: Path, seed: int) -> None:
    """Save a CLIPModel folder like openai/clip-vit-large-patch14: both towers with projections to one
    shared dimension, its tokenizer and image processor (224 px, so diffusers' default processor fits)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPVisionConfig

    tokenizer = _make_tokenizer()
    text = _text_config(tokenizer, _CLIP_L_TEXT_HIDDEN, _CLIP_L_PROJ).to_dict()
    vision = CLIPVisionConfig(
        hidden_size=_CLIP_L_VISION_HIDDEN,
        intermediate_size=2 * _CLIP_L_VISION_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=224,
        patch_size=32,
        projection_dim=_CLIP_L_PROJ,
    ).to_dict()
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=_CLIP_L_PROJ))
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    CLIPImageProcessor().save_pretrained(dest)


def _build_siglip(dest: Path, seed: int) -> None:
    """Save a SigLIP vision tower (so400m topology: no CLS token, attention-pooling head) with its
    SiglipImageProcessor, which the SD3 IP-Adapter loader reads from the same folder."""
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(
        hidden_size=_SIGLIP_HIDDEN,
        intermediate_size=2 * _SIGLIP_HIDDEN,
        num_hidden_layers=3,
        num_attention_heads=2,
        image_size=_SIGLIP_IMAGE,
        patch_size=_SIGLIP_PATCH,
    )
    torch.manual_seed(seed)
    SiglipVisionModel(config).save_pretrained(dest, safe_serialization=True)
    size = {"height": _SIGLIP_IMAGE, "width": _SIGLIP_IMAGE}
    SiglipImageProcessor(size=size).save_pretrained(dest)


# --------------------------------------------------------------------------------------------
# IP-Adapter files in the published layouts

# diffusers' IPAdapterTimeImageProjection names -> InstantX's TimeResampler names (diffusers maps back).
_INSTANTX_BLOCK_NAMES = {
    "ln0": "0.norm1",
    "ln1": "0.norm2",
    "attn.to_q": "0.to_q",
    "attn.to_kv": "0.to_kv",
    "attn.to_out.0": "0.to_out",
    "adaln_norm": "1.0",
    "ff.net.0.proj": "1.1",
    "ff.net.2": "1.3",
    "adaln_proj": "2.1",
}


def _instantx_resampler_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers IPAdapterTimeImageProjection state dict to the InstantX file's key names."""
    renamed = {}
    for key, value in state.items():
        if key.startswith("layers."):
            _, index, rest = key.split(".", 2)
            module, _, param = rest.rpartition(".")
            key = f"layers.{index}.{_INSTANTX_BLOCK_NAMES[module]}.{param}"
        renamed[key] = value
    return renamed


def _sd3_adapter(seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """InstantX SD3.5-Large-IP-Adapter: ``image_proj`` (time-conditioned resampler, original key names)
    and ``ip_adapter`` (``{block}.norm_ip / to_k_ip / to_v_ip / norm_q / norm_k / norm_ip_k`` per joint block)."""
    from diffusers.models.attention_processor import SD3IPAdapterJointAttnProcessor2_0
    from diffusers.models.embeddings import IPAdapterTimeImageProjection

    gen = torch.Generator().manual_seed(seed)
    resampler = IPAdapterTimeImageProjection(
        embed_dim=_SIGLIP_HIDDEN,
        output_dim=_SD3_INNER,
        hidden_dim=_RESAMPLER_HIDDEN,
        depth=_RESAMPLER_DEPTH,
        dim_head=_RESAMPLER_HEAD_DIM,
        heads=1,
        num_queries=_RESAMPLER_QUERIES,
        timestep_in_dim=_RESAMPLER_TIME_IN,
    )
    image_proj = _instantx_resampler_keys(_prefixed("", _randomise(resampler, gen).state_dict()))
    layers: dict[str, torch.Tensor] = {}
    for block in range(_SD3_LAYERS):
        processor = SD3IPAdapterJointAttnProcessor2_0(
            hidden_size=_SD3_INNER,
            ip_hidden_states_dim=_SD3_INNER,
            head_dim=_SD3_HEAD_DIM,
            timesteps_emb_dim=_RESAMPLER_HIDDEN,
        )
        layers.update(_prefixed(f"{block}.", _randomise(processor, gen).state_dict()))
    return {"image_proj": image_proj, "ip_adapter": layers}


def _xlabs_adapter(tokens: int, seed: int) -> dict[str, torch.Tensor]:
    """XLabs FLUX IP-Adapter, flat keys as published: ``ip_adapter_proj_model.{proj,norm}.*`` (CLIP
    image_embeds -> ``tokens`` x 4096) and ``double_blocks.{i}.processor.ip_adapter_double_stream_{k,v}_proj.*``
    for every double-stream block (single-stream blocks get nothing)."""
    gen = torch.Generator().manual_seed(seed)
    inner = _FLUX_HEADS * _FLUX_HEAD_DIM
    state = {
        "ip_adapter_proj_model.proj.weight": _randn(gen, tokens * _FLUX_T5_DIM, _CLIP_L_PROJ, std=_CLIP_L_PROJ**-0.5),
        "ip_adapter_proj_model.proj.bias": _randn(gen, tokens * _FLUX_T5_DIM, std=0.02),
        "ip_adapter_proj_model.norm.weight": 1.0 + _randn(gen, _FLUX_T5_DIM, std=0.05),
        "ip_adapter_proj_model.norm.bias": _randn(gen, _FLUX_T5_DIM, std=0.05),
    }
    for block in range(_FLUX_DOUBLE):
        for kind in ("k", "v"):
            prefix = f"double_blocks.{block}.processor.ip_adapter_double_stream_{kind}_proj"
            state[f"{prefix}.weight"] = _randn(gen, inner, _FLUX_T5_DIM, std=_FLUX_T5_DIM**-0.5)
            state[f"{prefix}.bias"] = _randn(gen, inner, std=0.02)
    return state


# --------------------------------------------------------------------------------------------
# Build


def _build_into(tmp: Path, seed: int) -> None:
    """Write every artefact of the DiT fixture tree into ``tmp``."""
    paths = _layout(tmp)
    _build_clip_l(paths.clip_l, seed + 40)
    _build_siglip(paths.siglip, seed + 41)
    _build_sd3(paths.sd3, seed + 50)
    _build_flux(paths.flux, paths.clip_l, seed + 60)

    paths.sd3_adapter.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_sd3_adapter(seed + 70), paths.sd3_adapter)
    _save_adapter(_xlabs_adapter(_XLABS_TOKENS["v1"], seed + 71), paths.flux_adapter)
    _save_adapter(_xlabs_adapter(_XLABS_TOKENS["v2"], seed + 72), paths.flux_adapter_v2)

    _make_style_image(paths.style_image, (96, 64), seed=seed)
    _make_content_image(paths.content_image, (64, 64), seed=seed + 1)


def build_tiny_dit_models(root: Path, seed: int = 0) -> TinyDiTModels:
    """Build the DiT fixture tree under ``root`` and return its paths; a no-op when already built
    (the marker records only DIT_FIXTURE_VERSION, so a finished tree is reused whatever ``seed``)."""
    root = Path(root).expanduser().absolute()
    build_once(root, DIT_FIXTURE_VERSION, lambda tmp: _build_into(tmp, seed))
    return _layout(root)


def tiny_dit_models(cache_dir: Path | None = None) -> TinyDiTModels:
    """Build (once) and return the shared DiT fixture tree: at ``cache_dir``, else
    ``$INSTANTSTYLE_DIT_FIXTURES``, else ``~/.cache/instantstyle/dit-<DIT_FIXTURE_VERSION>``."""
    if cache_dir is None:
        env = os.environ.get("INSTANTSTYLE_DIT_FIXTURES")
        cache_dir = Path(env) if env else Path.home() / ".cache" / "instantstyle" / f"dit-{DIT_FIXTURE_VERSION}"
    return build_tiny_dit_models(Path(cache_dir))
