"""The benchmark's own helpers: the statistics it reports, the order it times in, and that what it counts on
the meta device is what the library really builds (so a refactor of the core cannot silently leave the FLOP
table counting something else)."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import common  # noqa: E402
import flops  # noqa: E402
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0  # noqa: E402

from instantstyle import StylePipeline  # noqa: E402
from instantstyle.core.adapter import adapter_parameter_count  # noqa: E402
from instantstyle.core.blocks import resolve_blocks  # noqa: E402
from instantstyle.families import family_named  # noqa: E402


def test_rotated_rounds_put_each_contestant_in_each_position_once_per_cycle() -> None:
    names = ["a", "a2", "b", "c"]
    orders = [common.rotated(names, r) for r in range(len(names))]
    for position in range(len(names)):
        assert sorted(order[position] for order in orders) == sorted(names)
    assert all(sorted(order) == sorted(names) for order in orders)


def test_spread_reports_median_quartiles_and_range() -> None:
    s = common.Spread.of([1.04, 0.98, 1.00, 1.02, 0.96])
    assert (s.median, s.low, s.high, s.n) == (1.00, 0.96, 1.04, 5)
    assert (round(s.q1, 6), round(s.q3, 6)) == (0.98, 1.02)
    assert round(s.half_range, 6) == 0.04


def test_per_round_ratios_refuse_unpaired_rounds() -> None:
    assert common.ratios([2.0, 3.0], [1.0, 3.0]) == [2.0, 1.0]
    with pytest.raises(ValueError):
        common.ratios([1.0, 2.0], [1.0])


def scaled_layers(pipe) -> set[str]:
    """Layers whose IP-Adapter processor has a non-zero scale (the image attention runs there)."""
    return {
        name.removesuffix(".processor")
        for name, proc in pipe.unet.attn_processors.items()
        if isinstance(proc, IPAdapterAttnProcessor2_0) and any(proc.scale)
    }


@pytest.mark.parametrize("preset", common.PRESETS)
def test_diffusers_scale_dicts_target_the_same_layers_as_instantstyle_presets(preset: str) -> None:
    b = flops.contestant_pipeline(common.SMOKE, "b", preset)
    layers = family_named("sdxl").layers(b.unet)
    assert scaled_layers(b) == set(resolve_blocks(preset, layers, "sdxl"))


def test_flop_count_grows_only_with_the_layers_a_preset_targets() -> None:
    def count(who: str, preset: str) -> int:
        return flops.step_flops(flops.contestant_pipeline(common.SMOKE, who, preset), 64)

    plain, style, both, every = count("a", "style"), count("c", "style"), count("c", "style+layout"), count("c", "all")
    assert plain < style < both < every
    assert count("b", "style") == style  # diffusers skips the image attention of layers at scale 0


@pytest.fixture(scope="module")
def tiny_topology(tiny) -> common.Topology:
    """The shared tiny fixture's UNet and encoder configs as a benchmark topology."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPVisionConfig

    unet = {k: v for k, v in UNet2DConditionModel.load_config(str(tiny.sdxl / "unet")).items()
            if not k.startswith("_")}
    encoder = CLIPVisionConfig.from_pretrained(str(tiny.sdxl_adapter.parent / "image_encoder")).to_dict()
    return replace(common.SMOKE, name="tiny", unet=unet, image_encoder=encoder)


@pytest.mark.parametrize("preset", ["style", "style+layout"])
def test_meta_instantstyle_unet_has_the_processors_and_weights_of_a_real_style_pipeline(
    tiny, tiny_topology, preset: str
) -> None:
    real = StylePipeline.from_pretrained(str(tiny.sdxl), str(tiny.sdxl_adapter), device="cpu", blocks=preset)
    meta = flops.contestant_pipeline(tiny_topology, "c", preset)

    def kinds(unet) -> dict[str, str]:
        return {name: type(proc).__name__ for name, proc in unet.attn_processors.items()}

    assert kinds(meta.unet) == kinds(real.pipe.unet)
    assert flops.adapter_residency(tiny_topology, [preset])[f"c:{preset}"] == adapter_parameter_count(real.pipe.unet)


def test_phase_peaks_keep_one_peak_per_phase_in_the_order_phases_run() -> None:
    import torch

    peaks = common.PhasePeaks(common.PeakMemory(torch.device("cpu")))
    peaks.start()
    for phase in ["text", "text", "style", "text", "denoise", "decode", "end"]:
        peaks(phase)
    result = peaks.finish()
    assert list(result) == ["setup", "text", "style", "denoise", "decode"]
    assert all(value > 0 for value in result.values())


def test_diffusers_phases_are_seen_from_the_models_that_run_them(tiny) -> None:
    """Plain diffusers tells no phases: the benchmark sees them from the first forward of each phase's model, in
    the order instantstyle tells its own."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny.sdxl))
    pipe.set_progress_bar_config(disable=True)
    told: list[str] = []
    common.watch_phases(pipe, told.append)
    pipe("a cat", num_inference_steps=2, width=64, height=64, generator=torch.Generator().manual_seed(0))
    seen = [phase for k, phase in enumerate(told) if phase not in told[:k]]
    assert seen == ["text", "denoise", "decode"]
