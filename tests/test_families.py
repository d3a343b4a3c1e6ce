"""The model-family seam: every model is of exactly one family, told the same way from its config, its loaded
pipeline or its single-file checkpoint; the core asks the family, never a family's name."""

from __future__ import annotations

import pytest

from instantstyle import UserError
from instantstyle.families import all_families, family_named, family_of, family_of_denoiser
from instantstyle.hub import checkpoint_family
from instantstyle.preflight import model_layers
from instantstyle.testing.single_file import export_single_file


def test_the_fixture_models_are_each_of_exactly_one_family(sdxl, sd15):
    assert (family_of(sdxl.pipe).name, family_of(sd15.pipe).name) == ("sdxl", "sd15")  # family_of refuses overlaps


@pytest.mark.parametrize("arch", ["sdxl", "sd15"])
def test_the_family_and_layers_from_the_config_alone_are_those_of_the_loaded_model(arch, tiny, request):
    loaded = request.getfixturevalue(arch)
    family, layers = model_layers(str(getattr(tiny, arch)))
    assert family is loaded.family and layers == loaded.layers


@pytest.mark.parametrize("arch", ["sdxl", "sd15"])
def test_a_single_file_checkpoint_is_recognised_by_its_family(arch, tiny, tmp_path):
    single = export_single_file(getattr(tiny, arch), tmp_path / "model.safetensors")
    assert checkpoint_family(single).name == arch


def test_every_family_offers_the_presets_the_surfaces_name():
    for family in all_families():
        assert {"style", "layout", "style+layout", "all"} <= set(family.presets), family.name


def test_a_denoiser_of_no_known_family_is_one_clear_error():
    with pytest.raises(UserError, match=r"^model x: not a supported model family \("):
        family_of_denoiser("SD3Transformer2DModel", {"joint_attention_dim": 4096}, "model x")


def test_an_unknown_family_name_is_an_error_naming_the_known_ones():
    with pytest.raises(UserError, match="unknown model family 'flux'"):
        family_named("flux")


def test_a_controlnet_default_comes_from_the_family(sdxl, sd15, tiny):
    from instantstyle import Request

    request = Request("a cat", style=str(tiny.style_image), control="canny", control_image=str(tiny.style_image))
    assert sdxl.complete(request).controlnet == family_named("sdxl").default_controlnets["canny"]
    assert sd15.complete(request).controlnet == family_named("sd15").default_controlnets["canny"]
