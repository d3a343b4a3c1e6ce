"""The model-family seam: every model is of exactly one family, told the same way from its config, its loaded
pipeline or its single-file checkpoint; the core asks the family, never a family's name."""

from __future__ import annotations

import pytest

from instantstyle import UserError
from instantstyle.core.preflight import model_info
from instantstyle.families import all_families, family_named, family_of, family_of_denoiser
from instantstyle.loading.hub import checkpoint_family
from instantstyle.testing.single_file import export_single_file

from .conftest import complete_for

ARCHS = ["sdxl", "sd15", "sd3", "flux", "kolors"]
EVERY_UNET_BLOCK = ("down_blocks", "mid_block", "up_blocks")
#: The blocks each family's presets must target, written down independently of ``families/``: InstantStyle's on SDXL
#: (style ``up_blocks.0.attentions.1``, layout ``down_blocks.2.attentions.1``) and Kolors (SDXL's UNet), whole blocks on
#: SD1.5 (experimental in the paper), and only ``all`` where no block has been measured (SD3, FLUX).
PRESETS = {
    "sdxl": {"style": ("up_blocks.0.attentions.1",), "layout": ("down_blocks.2.attentions.1",),
             "style+layout": ("up_blocks.0.attentions.1", "down_blocks.2.attentions.1"), "all": EVERY_UNET_BLOCK},
    "sd15": {"style": ("up_blocks.1",), "layout": ("down_blocks.2", "mid_block"),
             "style+layout": ("down_blocks.2", "mid_block", "up_blocks.1"), "all": EVERY_UNET_BLOCK},
    "sd3": {"all": ("transformer_blocks",)},
    "flux": {"all": ("transformer_blocks",)},
}
PRESETS["kolors"] = PRESETS["sdxl"]
#: What a request that names no blocks gets, and the layers of the tiny fixtures' style blocks.
DEFAULT_BLOCKS = {"sdxl": "style", "sd15": "style", "kolors": "style", "sd3": "all", "flux": "all"}
STYLE_LAYERS = {
    "sdxl": [f"up_blocks.0.attentions.1.transformer_blocks.{i}.attn2" for i in range(2)],
    "kolors": [f"up_blocks.0.attentions.1.transformer_blocks.{i}.attn2" for i in range(2)],
    "sd15": [f"up_blocks.1.attentions.{i}.transformer_blocks.0.attn2" for i in range(3)],
}


def test_the_fixture_models_are_each_of_exactly_one_family(sdxl, sd15, sd3, flux, kolors):
    names = [family_of(pipe.pipe).name for pipe in (sdxl, sd15, sd3, flux, kolors)]  # family_of refuses overlaps
    assert names == ARCHS


@pytest.mark.parametrize("arch", ARCHS)
def test_the_family_and_layers_from_the_config_alone_are_those_of_the_loaded_model(arch, request):
    loaded = request.getfixturevalue(arch)
    info = model_info(loaded.resources.model_id)
    assert info.family is loaded.resources.family and info.layers == loaded.resources.layers


@pytest.mark.parametrize("arch", ["sdxl", "sd15"])
def test_a_single_file_checkpoint_is_recognised_by_its_family(arch, tiny, tmp_path):
    single = export_single_file(getattr(tiny, arch), tmp_path / "model.safetensors")
    assert checkpoint_family(single).name == arch


@pytest.mark.parametrize("arch", ARCHS)
def test_all_is_every_layer_and_no_blocks_is_the_familys_documented_default(arch, request):
    from instantstyle.core.blocks import resolve_blocks

    pipe = request.getfixturevalue(arch)
    layers, family = pipe.resources.layers, pipe.resources.family
    assert resolve_blocks("all", layers, family) == dict.fromkeys(layers, 1.0)
    default = resolve_blocks(None, layers, family)
    assert default == resolve_blocks(DEFAULT_BLOCKS[arch], layers, family)
    if arch in STYLE_LAYERS:
        assert list(default) == STYLE_LAYERS[arch]


def test_each_family_offers_exactly_the_papers_presets_and_the_transformers_only_all():
    """No block of SD3 or FLUX has been measured to carry style or layout: no such preset is invented."""
    assert {family.name: dict(family.presets) for family in all_families()} == PRESETS


def test_a_denoiser_of_no_known_family_is_one_clear_error():
    with pytest.raises(UserError, match=r"^model x: not a supported model family \("):
        family_of_denoiser("HunyuanDiT2DModel", {"cross_attention_dim": 1024}, "model x")


def test_an_unknown_family_name_is_an_error_naming_the_known_ones():
    with pytest.raises(UserError, match=r"unknown model family 'hunyuan' \(flux, kolors, sd15, sd3, sdxl\)"):
        family_named("hunyuan")


@pytest.mark.parametrize(("arch", "kind", "controlnet"), [
    ("sdxl", "canny", "diffusers/controlnet-canny-sdxl-1.0"),
    ("sdxl", "depth", "diffusers/controlnet-depth-sdxl-1.0"),
    ("sd15", "canny", "lllyasviel/control_v11p_sd15_canny"),
    ("sd15", "depth", "lllyasviel/control_v11f1p_sd15_depth"),
])
def test_a_request_without_a_controlnet_gets_its_familys_published_one(arch, kind, controlnet, tiny, request):
    from instantstyle import Request

    pipe = request.getfixturevalue(arch)
    asked = Request("a cat", style=str(tiny.style_image), control=kind, control_image=str(tiny.style_image))
    assert complete_for(pipe, asked).controlnet == controlnet
