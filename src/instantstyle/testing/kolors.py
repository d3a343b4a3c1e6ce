"""Tiny random-weight stand-ins for Kolors (Kwai-Kolors/Kolors-diffusers) and Kwai-Kolors/Kolors-IP-Adapter-Plus.

The real topology, only tiny: SDXL's UNet with a ``text_proj`` from ChatGLM3's width (``encoder_hid_dim``),
ChatGLM3 (multi-query attention with 2 groups, rotary positions, RMSNorm, a QKV bias) with its sentencepiece
tokenizer (left padding, ``[gMASK]`` and ``sop`` in front), SDXL's VAE and Kolors' Euler schedule (1100 training
steps); a CLIP ViT-L/14-336 image encoder (336 px, 14 px patches) in ``image_encoder/`` beside the adapter, and the
plus adapter in h94's key layout (``ip_adapter_plus_general.bin``, the published name). The sentencepiece model
is written as a ``ModelProto`` in code (a Unigram vocabulary), not trained. Everything is saved with
``save_pretrained`` and loaded back by the code under test through diffusers' and transformers' own loaders.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .dit import _randomise
from .fixtures import _make_content_image, _plus_adapter, _save_adapter_bin, _save_pipeline, _tiny_vae
from .fixtures import make_style_image as _make_style_image
from .trees import build_once

KOLORS_FIXTURE_VERSION = "1"
"""Bumped whenever the fixture contents change, so stale cached builds are rebuilt."""

# Kolors (real values in comments); dimensions pairwise distinct where a mix-up would go unnoticed.
_GLM_HIDDEN = 32  # 4096 (ChatGLM3-6B)
_GLM_LAYERS = 2  # 28
_GLM_HEADS = 4  # 32
_GLM_KV_CHANNELS = 8  # 128
_GLM_FFN = 48  # 13696
_GLM_GROUPS = 2  # 2 (multi-query attention groups)
_GLM_VOCAB = 192  # 65024 (padded)
_GLM_SEQ = 256  # 32768; Kolors reads 256 tokens
_CROSS_DIM = 64  # 2048
_TIME_EMBED_DIM = 8  # 256
_CHANNELS = (32, 64, 128)  # (320, 640, 1280)
_HEADS = (2, 4, 8)  # (5, 10, 20)
_TRANSFORMER_LAYERS = (1, 2, 2)  # (1, 2, 10)
_SAMPLE_SIZE = 8  # 128: 64 px by default here, 1024 px for the real model
_VIT_HIDDEN = 48  # 1024 (CLIP ViT-L/14-336)
_VIT_PROJ = 16  # 768
_VIT_IMAGE = 336  # 336
_VIT_PATCH = 14  # 14: 577 tokens, as the real encoder

_WORDS = ("the", "cat", "dog", "photo", "of", "in", "style", "painting", "portrait", "house", "a")
_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-"


@dataclass(frozen=True)
class TinyKolorsModels:
    """Paths of one built Kolors fixture tree (see ``build_tiny_kolors_models``); the adapter folder mirrors the
    hub repository Kwai-Kolors/Kolors-IP-Adapter-Plus."""

    root: Path
    kolors: Path  # diffusers folder: KolorsPipeline (ChatGLM text encoder and tokenizer)
    adapter_repo: Path
    adapter: Path  # <repo>/ip_adapter_plus_general.bin (h94's plus layout, torch.save'd dicts)
    image_encoder: Path  # <repo>/image_encoder: CLIP ViT-L/14-336
    style_image: Path
    content_image: Path


def _layout(root: Path) -> TinyKolorsModels:
    repo = root / "Kwai-Kolors" / "Kolors-IP-Adapter-Plus"
    return TinyKolorsModels(
        root=root,
        kolors=root / "Kwai-Kolors" / "Kolors-diffusers",
        adapter_repo=repo,
        adapter=repo / "ip_adapter_plus_general.bin",
        image_encoder=repo / "image_encoder",
        style_image=root / "style.png",
        content_image=root / "content.png",
    )


def write_sentencepiece_model(path: Path) -> Path:
    """A sentencepiece Unigram model (``<unk>`` 0, ``<s>`` 1, ``</s>`` 2 as ChatGLM3's, then word pieces and
    characters), written as the ``ModelProto`` sentencepiece reads."""
    import importlib

    model_pb2: Any = importlib.import_module("sentencepiece.sentencepiece_model_pb2")  # protobuf: no type stubs
    model = model_pb2.ModelProto()
    piece_type = model_pb2.ModelProto.SentencePiece
    pieces = [("<unk>", 0.0, piece_type.UNKNOWN), ("<s>", 0.0, piece_type.CONTROL),
              ("</s>", 0.0, piece_type.CONTROL), ("▁", -2.0, piece_type.NORMAL)]
    pieces += [(f"▁{w}", -1.0, piece_type.NORMAL) for w in _WORDS]
    pieces += [(f"▁{c}", -4.0, piece_type.NORMAL) for c in _CHARS] + [(c, -5.0, piece_type.NORMAL) for c in _CHARS]
    for text, score, kind in dict((p[0], p) for p in pieces).values():  # first spelling of each piece wins
        piece = model.pieces.add()
        piece.piece, piece.score, piece.type = text, score, kind
    spec = model.trainer_spec
    spec.model_type, spec.vocab_size = model_pb2.TrainerSpec.UNIGRAM, len(model.pieces)
    spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = 0, 1, 2, -1
    normalizer = model.normalizer_spec
    normalizer.name, normalizer.add_dummy_prefix = "identity", True
    normalizer.remove_extra_whitespaces, normalizer.escape_whitespaces = True, True
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def _chatglm(tokenizer, seed: int):
    """ChatGLM3 as Kolors' text_encoder config has it (multi-query attention, QKV bias, RMSNorm, original rope)."""
    from diffusers.pipelines.kolors import ChatGLMModel
    from diffusers.pipelines.kolors.text_encoder import ChatGLMConfig

    assert tokenizer.vocab_size <= _GLM_VOCAB
    config = ChatGLMConfig(
        num_layers=_GLM_LAYERS,
        padded_vocab_size=_GLM_VOCAB,
        hidden_size=_GLM_HIDDEN,
        ffn_hidden_size=_GLM_FFN,
        kv_channels=_GLM_KV_CHANNELS,
        num_attention_heads=_GLM_HEADS,
        seq_length=_GLM_SEQ,
        multi_query_attention=True,
        multi_query_group_num=_GLM_GROUPS,
        add_qkv_bias=True,
        add_bias_linear=False,
        rmsnorm=True,
        post_layer_norm=True,
        original_rope=True,
        use_cache=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = ChatGLMModel(config, empty_init=False)
    return _randomise(model, torch.Generator().manual_seed(seed)).eval()


def _kolors_unet():
    """SDXL's UNet topology with Kolors' text projection (``text_proj`` from ChatGLM's width)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=_SAMPLE_SIZE,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=_CHANNELS,
        layers_per_block=2,
        transformer_layers_per_block=_TRANSFORMER_LAYERS,
        attention_head_dim=_HEADS,
        cross_attention_dim=_CROSS_DIM,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=6 * _TIME_EMBED_DIM + _GLM_HIDDEN,  # the pooled text is ChatGLM's
        encoder_hid_dim=_GLM_HIDDEN,
        encoder_hid_dim_type="text_proj",
        norm_num_groups=32,
    )


def _build_kolors(dest: Path, tokenizer_model: Path, seed: int):
    """Save a tiny KolorsPipeline (no image encoder, as Kolors-diffusers); returns its UNet for the adapter."""
    from diffusers import EulerDiscreteScheduler, KolorsPipeline
    from diffusers.pipelines.kolors import ChatGLMTokenizer

    tokenizer = ChatGLMTokenizer(str(tokenizer_model))
    torch.manual_seed(seed)
    unet = _kolors_unet()
    torch.manual_seed(seed + 1)
    vae = _tiny_vae(scaling_factor=0.13025, force_upcast=True)
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1100,
        beta_start=0.00085,
        beta_end=0.014,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
        interpolation_type="linear",
        prediction_type="epsilon",
        use_karras_sigmas=False,
    )
    pipe = KolorsPipeline(vae=vae, text_encoder=_chatglm(tokenizer, seed + 2), tokenizer=tokenizer, unet=unet,
                          scheduler=scheduler, force_zeros_for_empty_prompt=False)
    _save_pipeline(pipe, dest)
    return unet


def _build_image_encoder(dest: Path, seed: int) -> None:
    """CLIP ViT-L/14-336's vision tower with projection, and its 336 px processor."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=_VIT_HIDDEN,
        intermediate_size=2 * _VIT_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=_VIT_IMAGE,
        patch_size=_VIT_PATCH,
        projection_dim=_VIT_PROJ,
        hidden_act="quick_gelu",
    )
    torch.manual_seed(seed)
    CLIPVisionModelWithProjection(config).save_pretrained(dest, safe_serialization=True)
    CLIPImageProcessor(size=_VIT_IMAGE, crop_size=_VIT_IMAGE).save_pretrained(dest)


def _build_into(tmp: Path, seed: int) -> None:
    paths = _layout(tmp)
    tokenizer_model = write_sentencepiece_model(tmp / "tokenizer-source" / "tokenizer.model")
    unet = _build_kolors(paths.kolors, tokenizer_model, seed + 80)
    _build_image_encoder(paths.image_encoder, seed + 81)
    _save_adapter_bin(_plus_adapter(unet, _VIT_HIDDEN, seed + 82), paths.adapter)
    _make_style_image(paths.style_image, (96, 64), seed=seed)
    _make_content_image(paths.content_image, (64, 64), seed=seed + 1)
    tokenizer_model.unlink()  # the pipeline's tokenizer/ holds its copy
    tokenizer_model.parent.rmdir()


def build_tiny_kolors_models(root: Path, seed: int = 0) -> TinyKolorsModels:
    """Build the Kolors fixture tree under ``root`` and return its paths; a no-op when already built."""
    root = Path(root).expanduser().absolute()
    build_once(root, KOLORS_FIXTURE_VERSION, lambda tmp: _build_into(tmp, seed))
    return _layout(root)


def tiny_kolors_models(cache_dir: Path | None = None) -> TinyKolorsModels:
    """Build (once) and return the shared Kolors fixture tree: at ``cache_dir``, else ``$INSTANTSTYLE_KOLORS_FIXTURES``,
    else ``~/.cache/instantstyle/kolors-<KOLORS_FIXTURE_VERSION>``."""
    if cache_dir is None:
        env = os.environ.get("INSTANTSTYLE_KOLORS_FIXTURES")
        cache_dir = Path(env) if env else Path.home() / ".cache" / "instantstyle" / f"kolors-{KOLORS_FIXTURE_VERSION}"
    return build_tiny_kolors_models(Path(cache_dir))
