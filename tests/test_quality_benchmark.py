"""benchmarks/quality.py runs end to end on the tiny fixtures and labels its numbers as meaningless there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "quality.py"


def test_quality_benchmark_runs_on_the_fixtures(tiny, tmp_path):
    out = tmp_path / "quality"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--fixtures", "--fixture-dir", str(tiny.root), "--out", str(out),
         "--prompt", "a cat"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    methods = {r["method"] for r in records}
    assert len(methods) == 5 and len(records) == 2 * 5  # two fixture styles, one prompt, one seed
    assert all(r["clip_text"] is not None and r["csd_style"] is not None and r["content_leak"] is not None
               for r in records)
    table = (out / "table.md").read_text()
    assert "numbers are meaningless" in table
    assert all(f"| {m}" in table for m in methods)
    with Image.open(out / "plot.png") as plot:
        assert plot.format == "PNG"
