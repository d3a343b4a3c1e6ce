"""benchmarks/csgo.py counts what the library builds: its meta-device CSGO holds the layers a real CSGO pipeline
holds, and its report runs."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import common  # noqa: E402
import csgo as bench  # noqa: E402

from instantstyle import StylePipeline  # noqa: E402
from instantstyle.core import csgo_attention  # noqa: E402


def test_the_meta_csgo_holds_the_layers_of_a_real_csgo_pipeline(tiny, csgo_models):
    unet, controlnet = bench.models(common.SMOKE)
    bench.attach(unet, controlnet, bench.checkpoint(unet, controlnet, common.SMOKE), content=False)
    real = StylePipeline.from_pretrained(str(tiny.sdxl), str(csgo_models.checkpoint), device="cpu")
    real_unet = real.resources.denoiser
    assert csgo_attention.layers_holding(unet, "style") == csgo_attention.layers_holding(real_unet, "style")
    assert csgo_attention.layers_holding(unet, "content") == []
    down = [layer for layer in csgo_attention.cross_attention_layers(controlnet) if layer.startswith("down_blocks")]
    assert csgo_attention.layers_holding(controlnet, "style") == down


def test_the_flop_report_runs_and_csgo_costs_a_little_more():
    report = bench.flops_report([64], steps=2, topo=common.SMOKE)
    row = next(line for line in report.splitlines() if line.startswith("| 64x64 |") and "G |" in line)
    ratio = float(row.split("|")[4].strip().rstrip("%"))
    assert 0 < ratio < 50


def test_the_gpu_mode_runs_at_smoke_size_and_reports_every_figure():
    """The GPU run's part g on tiny models (the CPU here): both contestants timed in every round, CSGO's layers
    resident in the UNet and the ControlNet (the figures themselves are the benchmark's, not the test's)."""
    result = bench.gpu(smoke=True, size=64, steps=2, rounds=2)
    assert {name: len(times) for name, times in result["times"].items()} == {"a": 2, "a2": 2, "c": 2}
    assert all(per_step > 0 and whole > per_step for times in result["times"].values() for per_step, whole in times)
    layers = {name: count for name, count in result["parameters"].items() if name.startswith("CSGO")}
    assert len(layers) == 3 and all(count > 0 for count in layers.values())
    assert result["resident_bytes"]["c"] > result["resident_bytes"]["a"]
    report = bench.gpu_report(result)
    assert "| c/a: CSGO |" in report and "| a'/a: noise floor |" in report


def test_an_exhausted_time_limit_times_nothing_and_says_so():
    result = bench.gpu(smoke=True, size=64, steps=2, rounds=2, time_limit=0.0)
    assert result["times"] == {} and any("nothing timed" in note for note in result["notes"])
    assert "No timed round." in bench.gpu_report(result)
