"""The tiny offline fixtures load through the public diffusers/transformers loaders like the real files."""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from instantstyle.testing import FIXTURE_VERSION, TinyModels, build_tiny_models, make_style_image
from instantstyle.testing import fixtures as fixtures_module

# (pipeline, weight_name attribute, subfolder, image_encoder_folder or None for the default)
ADAPTER_CASES = {
    "sdxl": ("sdxl", "sdxl_adapter", "sdxl_models", None),
    "sdxl-bin": ("sdxl", "sdxl_adapter_bin", "sdxl_models", None),
    "sdxl-vit-h": ("sdxl", "sdxl_vith_adapter", "sdxl_models", "models/image_encoder"),
    "sdxl-plus": ("sdxl", "sdxl_plus_adapter", "sdxl_models", "models/image_encoder"),
    "sd15": ("sd15", "sd15_adapter", "models", None),
    "sd15-plus": ("sd15", "sd15_plus_adapter", "models", None),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    """One fixture tree for the module: building is the expensive part."""
    return build_tiny_models(tmp_path_factory.mktemp("fixtures") / "tiny")


def load_pipeline(models: TinyModels, kind: str):
    """Load the tiny SDXL or SD1.5 pipeline from disk with the public loader."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if kind == "sdxl" else StableDiffusionPipeline
    pipe = cls.from_pretrained(models.sdxl if kind == "sdxl" else models.sd15)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_with_adapter(models: TinyModels, case: str):
    """A pipeline with the adapter of ``case`` loaded through ``load_ip_adapter``."""
    kind, attr, subfolder, encoder_folder = ADAPTER_CASES[case]
    pipe = load_pipeline(models, kind)
    kwargs = {} if encoder_folder is None else {"image_encoder_folder": encoder_folder}
    weight = getattr(models, attr)
    pipe.load_ip_adapter(str(models.adapters), subfolder=subfolder, weight_name=weight.name, **kwargs)
    return pipe


def generate(pipe, **kwargs) -> np.ndarray:
    """64 px, 2 steps, CFG on, fixed seed: the cheapest real generation."""
    return pipe(
        "a photo of a cat",
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        **kwargs,
    ).images


def file_digests(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, keyed by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def cross_attention_processors(unet) -> list[str]:
    return [name for name in unet.attn_processors if name.endswith("attn2.processor")]


def test_every_path_exists(models: TinyModels) -> None:
    for field in fields(models):
        assert getattr(models, field.name).exists(), field.name
    assert (models.root / ".complete").read_text() == FIXTURE_VERSION


def test_adapter_repo_layout_matches_h94(models: TinyModels) -> None:
    for folder in ("models", "sdxl_models"):
        encoder = models.adapters / folder / "image_encoder"
        assert (encoder / "config.json").is_file()
        assert (encoder / "model.safetensors").is_file()
        assert not (encoder / "preprocessor_config.json").exists()  # the real folders have none


@pytest.mark.parametrize("case", sorted(ADAPTER_CASES))
def test_adapter_loads_and_generates(models: TinyModels, case: str) -> None:
    pipe = load_with_adapter(models, case)
    image = generate(pipe, ip_adapter_image=Image.open(models.style_image))
    assert image.shape == (1, 64, 64, 3)
    assert np.isfinite(image).all()


def test_sdxl_vith_adapter_runs_with_explicit_image_encoder(models: TinyModels) -> None:
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPVisionModelWithProjection

    encoder = CLIPVisionModelWithProjection.from_pretrained(models.adapters / "models" / "image_encoder")
    pipe = StableDiffusionXLPipeline.from_pretrained(models.sdxl, image_encoder=encoder)
    pipe.set_progress_bar_config(disable=True)
    weight = models.sdxl_vith_adapter
    pipe.load_ip_adapter(str(models.adapters), subfolder=weight.parent.name, weight_name=weight.name)
    assert pipe.image_encoder is encoder
    assert generate(pipe, ip_adapter_image=Image.open(models.style_image)).shape == (1, 64, 64, 3)


@pytest.mark.parametrize("case", ["sdxl", "sd15", "sd15-plus"])
def test_adapter_visibly_changes_the_image(models: TinyModels, case: str) -> None:
    pipe = load_with_adapter(models, case)
    style = Image.open(models.style_image)
    pipe.set_ip_adapter_scale(0.0)
    off = generate(pipe, ip_adapter_image=style)
    pipe.set_ip_adapter_scale(1.0)
    on = generate(pipe, ip_adapter_image=style)
    assert np.abs(on - off).mean() > 0.02  # pixels in [0, 1]


@pytest.mark.parametrize("kind", ["sdxl", "sd15"])
def test_plain_generation_defaults_to_64px(models: TinyModels, kind: str) -> None:
    pipe = load_pipeline(models, kind)
    image = pipe("a cat", num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 64, 64, 3)


@pytest.mark.parametrize(("case", "n_layers"), [("sdxl", 22), ("sd15", 16)])
def test_adapter_keys_cover_every_cross_attention_layer(models: TinyModels, case: str, n_layers: int) -> None:
    kind, attr, _, _ = ADAPTER_CASES[case]
    unet = load_pipeline(models, kind).unet
    layers = cross_attention_processors(unet)
    assert len(layers) == n_layers
    with safe_open(str(getattr(models, attr)), framework="pt") as f:
        ids = sorted({int(k.split(".")[1]) for k in f.keys() if k.startswith("ip_adapter.")})
        n_keys = sum(1 for k in f.keys() if k.startswith("ip_adapter."))
    assert ids == list(range(1, 2 * n_layers, 2))
    assert n_keys == 2 * n_layers


def test_bin_adapter_holds_the_safetensors_weights(models: TinyModels) -> None:
    legacy = torch.load(models.sdxl_adapter_bin, weights_only=True)
    assert set(legacy) == {"image_proj", "ip_adapter"}
    with safe_open(str(models.sdxl_adapter), framework="pt") as f:
        for key in f.keys():
            group, _, rest = key.partition(".")
            assert torch.equal(legacy[group][rest], f.get_tensor(key)), key


def test_sdxl_layout_is_real_topology(models: TinyModels) -> None:
    pipe = load_pipeline(models, "sdxl")
    unet = pipe.unet.config
    assert unet.down_block_types == ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
    assert unet.up_block_types == ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]
    text_hidden = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert unet.cross_attention_dim == text_hidden
    assert unet.projection_class_embeddings_input_dim == (
        6 * unet.addition_time_embed_dim + pipe.text_encoder_2.config.projection_dim
    )
    assert max(unet.transformer_layers_per_block) > 1
    assert pipe.vae_scale_factor == 8
    assert pipe.config.force_zeros_for_empty_prompt is True
    assert pipe.tokenizer_2.pad_token == "!"


def test_embedding_dims_pair_encoders_with_text_towers(models: TinyModels) -> None:
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    bigg = CLIPVisionModelWithProjection.from_pretrained(models.adapters / "sdxl_models" / "image_encoder")
    vith = CLIPVisionModelWithProjection.from_pretrained(models.adapters / "models" / "image_encoder")
    content_text = CLIPTextModelWithProjection.from_pretrained(models.content_text_encoder)
    text_encoder_2 = StableDiffusionXLPipeline.from_pretrained(models.sdxl).text_encoder_2
    assert bigg.config.projection_dim == text_encoder_2.config.projection_dim
    assert vith.config.projection_dim == content_text.config.projection_dim
    assert vith.config.projection_dim != bigg.config.projection_dim
    assert vith.config.hidden_size != bigg.config.hidden_size
    assert bigg.config.image_size == vith.config.image_size == 224


def test_content_text_encoder_folder_holds_its_tokenizer(models: TinyModels) -> None:
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(models.content_text_encoder)
    model = CLIPTextModelWithProjection.from_pretrained(models.content_text_encoder)
    tokens = tokenizer(["a cat"], padding="max_length", return_tensors="pt")
    assert tokens.input_ids.shape == (1, 77)
    assert model(**tokens).text_embeds.shape == (1, model.config.projection_dim)


def test_images_are_procedural_rgb(models: TinyModels) -> None:
    style, content = Image.open(models.style_image), Image.open(models.content_image)
    assert style.mode == content.mode == "RGB"
    assert style.size == (96, 64)
    assert np.asarray(style).std() > 10  # not flat


def test_make_style_image_is_deterministic(tmp_path: Path) -> None:
    a = make_style_image(tmp_path / "a.png", seed=3)
    b = make_style_image(tmp_path / "b.png", seed=3)
    c = make_style_image(tmp_path / "c.png", seed=4)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()


def test_rebuild_is_a_no_op(models: TinyModels, monkeypatch: pytest.MonkeyPatch) -> None:
    def build(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished tree was built again")

    monkeypatch.setattr(fixtures_module, "_build_into", build)
    before = {p: p.stat().st_mtime_ns for p in models.root.rglob("*")}
    again = build_tiny_models(models.root)
    assert again == models
    assert {p: p.stat().st_mtime_ns for p in models.root.rglob("*")} == before


def test_same_seed_gives_identical_files(models: TinyModels, tmp_path: Path) -> None:
    twin = build_tiny_models(tmp_path / "twin", seed=0)
    assert file_digests(twin.root) == file_digests(models.root)


def test_stale_version_is_rebuilt(tmp_path: Path) -> None:
    root = tmp_path / "tiny"
    root.mkdir()
    (root / ".complete").write_text("0-old")
    (root / "leftover.txt").write_text("x")
    build_tiny_models(root)
    assert (root / ".complete").read_text() == FIXTURE_VERSION
    assert not (root / "leftover.txt").exists()


def test_foreign_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        build_tiny_models(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_interrupted_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(fixtures_module, "_build_sd15", fail)  # SDXL is already written by then
    with pytest.raises(KeyboardInterrupt):
        build_tiny_models(tmp_path / "tiny")
    assert list(tmp_path.iterdir()) == []


def test_build_leaves_global_rng_untouched(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_models(tmp_path / "tiny")
    assert torch.equal(torch.rand(3), expected)


def test_model_index_records_no_safety_checker(models: TinyModels) -> None:
    index = json.loads((models.sd15 / "model_index.json").read_text())
    assert index["safety_checker"] == [None, None]
    assert index["requires_safety_checker"] is False
