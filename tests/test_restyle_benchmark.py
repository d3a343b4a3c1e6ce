"""benchmarks/restyle.py's gpu mode (part r of the GPU run) runs end to end at its smoke size (on the CPU here):
every call it times is split into its phases, a restyle's with an inversion and img2img's without, and an
exhausted time limit skips what would pass it and says so (the figures themselves are the benchmark's)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import restyle as bench  # noqa: E402


def test_the_gpu_mode_times_every_run_by_phase_at_smoke_size():
    result = bench.gpu(smoke=True, size=64, steps=2, rounds=1)
    runs = result["runs"]
    assert list(runs) == ["img2img (strength 1)", "restyle", "restyle + style guidance",
                          "restyle + style guidance, --memory-budget 14"]
    assert all(len(entry["rounds"]) == 1 for entry in runs.values())
    assert all(entry["median"]["denoise"] > 0 and entry["median"]["decode"] > 0 for entry in runs.values())
    assert runs["img2img (strength 1)"]["median"]["invert"] == 0
    assert all(entry["median"]["invert"] > 0 for name, entry in runs.items() if name.startswith("restyle"))
    assert result["computed"]["needed with --memory-budget (weights + checkpointed step + 0.5 reserve)"] > 0.5
    assert "| restyle + style guidance |" in bench.gpu_report(result)


def test_an_exhausted_time_limit_skips_every_run_and_says_so():
    result = bench.gpu(smoke=True, size=64, steps=2, rounds=1, time_limit=0.0)
    assert all(entry["rounds"] == [] and "out of --time-limit" in entry["skipped"]
               for entry in result["runs"].values())
    assert "computed" not in result and any("computed memory was skipped" in n for n in result["notes"])
    assert "out of --time-limit" in bench.gpu_report(result)
