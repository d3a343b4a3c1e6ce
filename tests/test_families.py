"""The model-family seam: every model is of exactly one family, told the same way from its config, its loaded
pipeline or its single-file checkpoint; the core asks the family, never a family's name."""

from __future__ import annotations

import pytest

from instantstyle import UserError
from instantstyle.core.plan import complete
from instantstyle.core.preflight import model_info
from instantstyle.families import all_families, family_named, family_of, family_of_denoiser
from instantstyle.loading.hub import checkpoint_family
from instantstyle.testing.single_file import export_single_file


def test_the_fixture_models_are_each_of_exactly_one_family(sdxl, sd15, sd3, flux):
    names = [family_of(pipe.pipe).name for pipe in (sdxl, sd15, sd3, flux)]  # family_of refuses overlaps
    assert names == ["sdxl", "sd15", "sd3", "flux"]


@pytest.mark.parametrize("arch", ["sdxl", "sd15", "sd3", "flux"])
def test_the_family_and_layers_from_the_config_alone_are_those_of_the_loaded_model(arch, request):
    loaded = request.getfixturevalue(arch)
    info = model_info(loaded.resources.model_id)
    assert info.family is loaded.resources.family and info.layers == loaded.resources.layers


@pytest.mark.parametrize("arch", ["sdxl", "sd15"])
def test_a_single_file_checkpoint_is_recognised_by_its_family(arch, tiny, tmp_path):
    single = export_single_file(getattr(tiny, arch), tmp_path / "model.safetensors")
    assert checkpoint_family(single).name == arch


def test_every_family_offers_all_and_a_default_that_resolves_on_its_models(sdxl, sd15, sd3, flux):
    from instantstyle.core.blocks import resolve_blocks

    for pipe in (sdxl, sd15, sd3, flux):
        res = pipe.resources
        assert "all" in res.family.presets and resolve_blocks(None, res.layers, res.family)


def test_the_unet_families_offer_the_papers_presets_and_the_transformers_only_all():
    """No block of SD3 or FLUX has been measured to carry style or layout: no such preset is invented."""
    presets = {family.name: set(family.presets) for family in all_families()}
    assert presets == {"sdxl": {"style", "layout", "style+layout", "all"},
                       "sd15": {"style", "layout", "style+layout", "all"}, "sd3": {"all"}, "flux": {"all"}}


def test_a_denoiser_of_no_known_family_is_one_clear_error():
    with pytest.raises(UserError, match=r"^model x: not a supported model family \("):
        family_of_denoiser("HunyuanDiT2DModel", {"cross_attention_dim": 1024}, "model x")


def test_an_unknown_family_name_is_an_error_naming_the_known_ones():
    with pytest.raises(UserError, match=r"unknown model family 'hunyuan' \(flux, sd15, sd3, sdxl\)"):
        family_named("hunyuan")


def test_a_controlnet_default_comes_from_the_family(sdxl, sd15, tiny):
    from instantstyle import Request

    request = Request("a cat", style=str(tiny.style_image), control="canny", control_image=str(tiny.style_image))
    assert complete(request, sdxl.resources).controlnet == family_named("sdxl").default_controlnets["canny"]
    assert complete(request, sd15.resources).controlnet == family_named("sd15").default_controlnets["canny"]
