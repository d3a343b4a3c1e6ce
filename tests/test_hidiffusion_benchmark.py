"""The HiDiffusion benchmark's gpu mode runs end to end at its smoke size (on the CPU here): the function the GPU
script calls builds the SDXL-structured UNet with a style-block adapter, runs plain and HiDiffusion, and reports
a ratio and each one's peak memory (the figures themselves are the benchmark's, not the test's)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import hidiffusion_flops  # noqa: E402


def test_the_gpu_mode_runs_at_smoke_size_and_reports_every_figure(tmp_path):
    out = tmp_path / "hidiffusion.json"
    result = hidiffusion_flops.gpu_benchmark(smoke=True, size=128, steps=3, repeats=1, equivalence=False,
                                             json_path=out)
    timing = result["timing"]
    assert timing["timed_rounds"] == 1 and timing["phases"] == {"pool": 1, "plain": 2}  # T1 = int(0.4 * 3) = 1
    assert timing["plain_s"] > 0 and timing["hidiffusion_s"] > 0 and timing["ratio_plain_over_hidiffusion"] > 0
    assert timing["peak_memory"]["plain_gib"] > 0 and timing["peak_memory"]["hidiffusion_gib"] > 0
    assert json.loads(out.read_text()) == result


def test_an_exhausted_time_limit_skips_the_equivalence_and_says_so(tmp_path):
    result = hidiffusion_flops.gpu_benchmark(smoke=True, size=64, steps=2, repeats=1, time_limit=0.0,
                                             workdir=tmp_path)
    assert result["timing"]["timed_rounds"] == 0 and "no timed round" in result["timing"]["note"]
    assert all(case == {"skipped": "out of time"} for case in result["equivalence"].values())
