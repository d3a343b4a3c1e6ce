"""The tiny SD3.5 / FLUX fixtures load through diffusers like the real checkpoints, and diffusers' own
IP-Adapter recipe (``load_ip_adapter`` + ``set_ip_adapter_scale`` + image or precomputed embeddings) works
on them: the reference the sd3 and flux families are compared with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from instantstyle.testing.dit import TinyDiTModels

from .test_fixtures import generate  # 64 px, 2 steps, seed 0: the cheapest real generation


def load(folder: Path):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def with_instantx(dit: TinyDiTModels):
    """SD3.5 with InstantX's adapter the way its model card does it: SigLIP given to the pipeline, then
    ``load_ip_adapter(repo, weight_name="ip-adapter.bin")``."""
    from transformers import SiglipImageProcessor, SiglipVisionModel

    pipe = load(dit.sd3)
    pipe.register_modules(
        image_encoder=SiglipVisionModel.from_pretrained(str(dit.siglip)),
        feature_extractor=SiglipImageProcessor.from_pretrained(str(dit.siglip)),
    )
    pipe.load_ip_adapter(str(dit.sd3_adapter_repo), weight_name=dit.sd3_adapter.name)
    return pipe


def with_xlabs(dit: TinyDiTModels, repo: Path):
    """FLUX with an XLabs adapter as diffusers documents it (the CLIP ViT-L/14 repo as image encoder)."""
    pipe = load(dit.flux)
    pipe.load_ip_adapter(
        str(repo),
        weight_name="ip_adapter.safetensors",
        image_encoder_pretrained_model_name_or_path=str(dit.clip_l),
        image_encoder_dtype=torch.float32,
    )
    return pipe


# --------------------------------------------------------------------------------------------
# The folders


def test_sd3_folder_is_an_sd35_large_pipeline_with_t5(dit: TinyDiTModels) -> None:
    from transformers import T5EncoderModel

    pipe = load(dit.sd3)
    assert type(pipe).__name__ == "StableDiffusion3Pipeline"
    assert pipe.transformer.config.qk_norm == "rms_norm" and pipe.transformer.config.in_channels == 16
    assert pipe.vae.config.latent_channels == 16 and not pipe.vae.config.use_quant_conv
    assert isinstance(pipe.text_encoder_3, T5EncoderModel)
    ids = pipe.tokenizer_3("a photo of a cat").input_ids
    assert ids[-1] == pipe.tokenizer_3.eos_token_id and pipe.tokenizer_3.unk_token_id not in ids


def test_flux_folder_is_guidance_distilled_with_double_and_single_stream_blocks(dit: TinyDiTModels) -> None:
    pipe = load(dit.flux)
    assert type(pipe).__name__ == "FluxPipeline"
    assert pipe.transformer.config.guidance_embeds
    names = list(pipe.transformer.attn_processors)
    assert any(n.startswith("transformer_blocks.") for n in names)
    assert any(n.startswith("single_transformer_blocks.") for n in names)


def test_clip_l_folder_holds_both_towers_with_one_projection(dit: TinyDiTModels) -> None:
    """Content subtraction on FLUX needs the text tower with projection of XLabs' image encoder."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    vision = CLIPVisionModelWithProjection.from_pretrained(str(dit.clip_l))
    text = CLIPTextModelWithProjection.from_pretrained(str(dit.clip_l))
    assert vision.config.projection_dim == text.config.projection_dim
    flux_text = CLIPTextModel.from_pretrained(str(dit.flux / "text_encoder"))
    tower = dict(text.text_model.named_parameters())
    assert all(torch.equal(p, tower[n]) for n, p in flux_text.named_parameters())


# --------------------------------------------------------------------------------------------
# SD3.5 + InstantX


@pytest.fixture(scope="module")
def sd3_plain(dit: TinyDiTModels) -> np.ndarray:
    return generate(load(dit.sd3))


@pytest.fixture(scope="module")
def sd3_ip(dit: TinyDiTModels):
    return with_instantx(dit)


def sd3_embeds(pipe, image: Image.Image) -> torch.Tensor:
    """diffusers' SD3 layout: one tensor, CFG negative half (zeros) first, SigLIP penultimate patch features."""
    features = pipe.encode_image(image, torch.device("cpu"))
    return torch.cat([torch.zeros_like(features), features])


def test_sd3_adapter_fills_every_joint_block(dit: TinyDiTModels, sd3_ip) -> None:
    from diffusers.models.attention_processor import SD3IPAdapterJointAttnProcessor2_0
    from diffusers.models.embeddings import IPAdapterTimeImageProjection

    blocks = {n: p for n, p in sd3_ip.transformer.attn_processors.items() if n.startswith("transformer_blocks.")}
    assert len(blocks) == sd3_ip.transformer.config.num_layers
    assert all(isinstance(p, SD3IPAdapterJointAttnProcessor2_0) for p in blocks.values())
    assert isinstance(sd3_ip.transformer.image_proj, IPAdapterTimeImageProjection)


def test_sd3_style_image_and_its_embeddings_give_the_same_styled_image(dit: TinyDiTModels, sd3_ip, sd3_plain) -> None:
    style = Image.open(dit.style_image)
    sd3_ip.set_ip_adapter_scale(1.0)
    from_image = generate(sd3_ip, ip_adapter_image=style)
    from_embeds = generate(sd3_ip, ip_adapter_image_embeds=sd3_embeds(sd3_ip, style))
    assert np.array_equal(from_image, from_embeds)
    assert np.abs(from_image - sd3_plain).max() > 0.05


def test_sd3_scale_zero_equals_the_plain_pipeline(dit: TinyDiTModels, sd3_ip, sd3_plain) -> None:
    sd3_ip.set_ip_adapter_scale(0.0)
    out = generate(sd3_ip, ip_adapter_image_embeds=sd3_embeds(sd3_ip, Image.open(dit.style_image)))
    assert np.array_equal(out, sd3_plain)


def test_sd3_a_block_at_scale_zero_skips_the_image_attention(dit: TinyDiTModels, sd3_ip, sd3_plain) -> None:
    """Per-layer scales are the processors' ``scale`` (``set_ip_adapter_scale`` takes one float)."""
    from diffusers.models.attention_processor import SD3IPAdapterJointAttnProcessor2_0

    called: list[str] = []
    hooks = []
    for name, proc in sd3_ip.transformer.attn_processors.items():
        if isinstance(proc, SD3IPAdapterJointAttnProcessor2_0):
            proc.scale = 1.0 if name == "transformer_blocks.2.attn.processor" else 0.0
            hooks.append(proc.to_k_ip.register_forward_hook(lambda *_, n=name: called.append(n)))
    try:
        out = generate(sd3_ip, ip_adapter_image_embeds=sd3_embeds(sd3_ip, Image.open(dit.style_image)))
    finally:
        for hook in hooks:
            hook.remove()
    assert set(called) == {"transformer_blocks.2.attn.processor"}
    assert np.abs(out - sd3_plain).max() > 0.01


# --------------------------------------------------------------------------------------------
# FLUX + XLabs (guidance-distilled: the image negative goes through true CFG)

TRUE_CFG = {"negative_prompt": "", "true_cfg_scale": 4.0}


@pytest.fixture(scope="module")
def flux_plain(dit: TinyDiTModels) -> np.ndarray:
    return generate(load(dit.flux), **TRUE_CFG)


@pytest.fixture(scope="module")
def flux_ip(dit: TinyDiTModels):
    return with_xlabs(dit, dit.flux_adapter_repo)


def flux_embeds(pipe, image) -> list[torch.Tensor]:
    """diffusers' FLUX layout: per adapter a (1, n_images, projection_dim) tensor of CLIP image_embeds."""
    return [pipe.encode_image(image, torch.device("cpu"), 1)[None]]


@pytest.mark.parametrize(("version", "tokens"), [("v1", 4), ("v2", 16)])
def test_xlabs_adapter_fills_the_double_stream_blocks_only(dit: TinyDiTModels, version: str, tokens: int) -> None:
    from diffusers.models.transformers.transformer_flux import FluxIPAdapterAttnProcessor

    pipe = with_xlabs(dit, dit.flux_adapter_repo if version == "v1" else dit.flux_adapter_v2_repo)
    procs = pipe.transformer.attn_processors
    with_adapter = {n for n, p in procs.items() if isinstance(p, FluxIPAdapterAttnProcessor)}
    assert with_adapter == {n for n in procs if n.startswith("transformer_blocks.")}
    assert len(with_adapter) == pipe.transformer.config.num_layers
    assert pipe.transformer.encoder_hid_proj.image_projection_layers[0].num_image_text_embeds == tokens


def test_flux_default_image_negative_is_a_black_image_through_true_cfg(dit: TinyDiTModels, flux_ip, flux_plain) -> None:
    """Given only the style image, diffusers encodes a black image as the negative (not zeros)."""
    style = Image.open(dit.style_image)
    flux_ip.set_ip_adapter_scale(1.0)
    from_image = generate(flux_ip, ip_adapter_image=style, **TRUE_CFG)
    black = flux_embeds(flux_ip, np.zeros((64, 64, 3), dtype=np.uint8))
    from_embeds = generate(
        flux_ip, ip_adapter_image_embeds=flux_embeds(flux_ip, style), negative_ip_adapter_image_embeds=black, **TRUE_CFG
    )
    assert np.array_equal(from_image, from_embeds)
    assert np.abs(from_image - flux_plain).max() > 0.05


def test_flux_scale_zero_equals_the_plain_pipeline(dit: TinyDiTModels, flux_ip, flux_plain) -> None:
    flux_ip.set_ip_adapter_scale(0.0)
    embeds = flux_embeds(flux_ip, Image.open(dit.style_image))
    zeros = [torch.zeros_like(embeds[0])]
    out = generate(flux_ip, ip_adapter_image_embeds=embeds, negative_ip_adapter_image_embeds=zeros, **TRUE_CFG)
    assert np.array_equal(out, flux_plain)


def test_flux_per_block_scale_list_gives_image_features_to_that_block_only(dit: TinyDiTModels, flux_ip) -> None:
    """XLabs' processor computes the image attention even at scale 0 and adds it times 0: the layer's
    third output (the image attention it adds) is observed instead of the calls."""
    layers = flux_ip.transformer.config.num_layers
    flux_ip.set_ip_adapter_scale([1.0 if i == 1 else 0.0 for i in range(layers)])
    added = dict.fromkeys(range(layers), 0.0)

    def record(index: int):
        def hook(_module, _inputs, outputs) -> None:
            added[index] += float(outputs[2].abs().sum())

        return hook

    hooks = [flux_ip.transformer.transformer_blocks[i].attn.register_forward_hook(record(i)) for i in range(layers)]
    try:
        embeds = flux_embeds(flux_ip, Image.open(dit.style_image))
        generate(flux_ip, ip_adapter_image_embeds=embeds, negative_ip_adapter_image_embeds=embeds, **TRUE_CFG)
    finally:
        for hook in hooks:
            hook.remove()
    assert [i for i, total in added.items() if total > 0] == [1]
