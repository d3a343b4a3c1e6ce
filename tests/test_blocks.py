"""Blocks: presets, spec parsing and resolution against a UNet's layer names (no models needed)."""

import pytest

from instantstyle import UserError
from instantstyle.core.blocks import list_blocks, parse_spec, resolve_blocks
from instantstyle.families.unet import attention_block

# The cross-attention layers of a UNet in SDXL topology with (1, 2, 2) transformer layers per block.
SDXL_LAYERS = (
    [f"down_blocks.{b}.attentions.{a}.transformer_blocks.{t}.attn2" for b in (1, 2) for a in (0, 1) for t in range(2)]
    + [
        f"up_blocks.{b}.attentions.{a}.transformer_blocks.{t}.attn2"
        for b in (0, 1)
        for a in (0, 1, 2)
        for t in range(2)
    ]
    + [
        "mid_block.attentions.0.transformer_blocks.0.attn2",
        "mid_block.attentions.0.transformer_blocks.1.attn2",
    ]
)


def test_style_preset_selects_every_layer_of_up_blocks_0_attentions_1():
    resolved = resolve_blocks("style", SDXL_LAYERS, "sdxl")
    assert set(resolved) == {f"up_blocks.0.attentions.1.transformer_blocks.{t}.attn2" for t in range(2)}
    assert set(resolved.values()) == {1.0}


def test_layout_preset_is_down_blocks_2_attentions_1():
    assert {attention_block(x) for x in resolve_blocks("layout", SDXL_LAYERS, "sdxl")} == {"down_blocks.2.attentions.1"}


def test_style_plus_layout_is_both_blocks():
    blocks = {attention_block(x) for x in resolve_blocks("style+layout", SDXL_LAYERS, "sdxl")}
    assert blocks == {"up_blocks.0.attentions.1", "down_blocks.2.attentions.1"}


def test_all_is_every_cross_attention_layer():
    assert set(resolve_blocks("all", SDXL_LAYERS, "sdxl")) == set(SDXL_LAYERS)


def test_sd15_style_preset_is_the_whole_up_blocks_1():
    layers = [f"up_blocks.1.attentions.{a}.transformer_blocks.0.attn2" for a in range(3)] + [
        "up_blocks.2.attentions.0.transformer_blocks.0.attn2"
    ]
    assert set(resolve_blocks("style", layers, "sd15")) == set(layers[:3])


def test_per_block_scales_times_global_scale():
    resolved = resolve_blocks("up_blocks.0.attentions.1=1.0,down_blocks.2.attentions.1=0.4", SDXL_LAYERS, "sdxl", 0.5)
    assert resolved["up_blocks.0.attentions.1.transformer_blocks.0.attn2"] == 0.5
    assert resolved["down_blocks.2.attentions.1.transformer_blocks.1.attn2"] == pytest.approx(0.2)


def test_presets_take_scales_too():
    resolved = resolve_blocks("style=1,layout=0.25", SDXL_LAYERS, "sdxl")
    assert resolved["down_blocks.2.attentions.1.transformer_blocks.0.attn2"] == 0.25


def test_block_name_does_not_match_a_longer_sibling():
    layers = [
        "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
        "up_blocks.10.attentions.0.transformer_blocks.0.attn2",
    ]
    assert list(resolve_blocks("up_blocks.1", layers, "sd15")) == layers[:1]


def test_unknown_block_is_an_error_listing_valid_names():
    with pytest.raises(UserError, match="valid names: .*style.*up_blocks.0.attentions.1"):
        resolve_blocks("up_blocks.9", SDXL_LAYERS, "sdxl")


@pytest.mark.parametrize("spec", ["", "style,,all", "=1", "style=abc"])
def test_malformed_spec_is_an_error(spec):
    with pytest.raises(UserError):
        parse_spec(spec)


def test_list_blocks_counts_layers_and_names_presets():
    rows = {r.name: r for r in list_blocks(SDXL_LAYERS, "sdxl")}
    assert rows["up_blocks.0.attentions.1"].layers == 2
    assert set(rows["up_blocks.0.attentions.1"].presets) == {"style", "style+layout", "all"}
    assert rows["mid_block.attentions.0"].presets == ("all",)


@pytest.mark.parametrize("spec", ["style=1e30", "style=nan", "style=inf", "layout=-1", "style=10.5"])
def test_block_scales_outside_0_to_10_are_errors(spec):
    with pytest.raises(UserError, match="between 0 and 10"):
        parse_spec(spec)


# The joint attention layers of a transformer in SD3.5 / FLUX naming (six blocks).
DIT_LAYERS = [f"transformer_blocks.{i}.attn" for i in range(6)]


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_a_range_selects_every_block_from_its_first_to_its_last(family):
    resolved = resolve_blocks("transformer_blocks.1-3=0.8,transformer_blocks.5", DIT_LAYERS, family)
    assert resolved == {"transformer_blocks.1.attn": 0.8, "transformer_blocks.2.attn": 0.8,
                        "transformer_blocks.3.attn": 0.8, "transformer_blocks.5.attn": 1.0}


def test_no_spec_is_the_familys_default():
    assert resolve_blocks(None, DIT_LAYERS, "flux") == resolve_blocks("all", DIT_LAYERS, "flux")
    assert resolve_blocks(None, SDXL_LAYERS, "sdxl") == resolve_blocks("style", SDXL_LAYERS, "sdxl")


def test_ranges_work_on_unet_blocks_too():
    assert {attention_block(x) for x in resolve_blocks("up_blocks.0.attentions.0-1", SDXL_LAYERS, "sdxl")} == {
        "up_blocks.0.attentions.0", "up_blocks.0.attentions.1"}


@pytest.mark.parametrize(("spec", "message"), [
    ("transformer_blocks.4-2", r"block range 'transformer_blocks.4-2' runs backwards \(write transformer_blocks.2-4\)"),
    ("transformer_blocks.4-9", r"block 'transformer_blocks.6' \(of range 'transformer_blocks.4-9'\) matches no "),
    ("transformer_blocks.0-99999999", "spans more than 1000 blocks"),
])
def test_a_bad_range_is_one_clear_error(spec, message):
    with pytest.raises(UserError, match=message):
        resolve_blocks(spec, DIT_LAYERS, "sd3")
