"""``instantstyle selftest``: the whole path, offline, on the built-in tiny random-weight models."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..core.pipeline import StylePipeline
from ..core.request import Request, StyleRef, read_png_request, write_png
from ..testing import tiny_models


def run_selftest(folder: Path | None = None) -> Iterator[str]:
    """Build tiny SDXL fixtures, load them like real weights, generate with and without style, check
    the style changed the image and the PNG metadata reproduces it. Yields progress lines."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(folder) if folder else Path(tmp)
        start = time.perf_counter()
        tiny = tiny_models(root / "tiny-models")
        yield f"built tiny SDXL + IP-Adapter fixtures in {root} ({time.perf_counter() - start:.1f} s)"
        pipe = StylePipeline.from_pretrained(str(tiny.sdxl), str(tiny.sdxl_adapter), device="cpu")
        res = pipe.resources
        yield f"loaded {res.family.name} pipeline, {res.adapter.kind} adapter, {len(res.layers)} cross-attention layers"
        request = Request("a cat", style=(StyleRef(str(tiny.style_image)),), steps=2, width=64, height=64, seed=0,
                          content_prompt="a dog")
        styled = pipe(request)
        plain = pipe(request.replace(scale=0.0))
        change = float(np.abs(np.asarray(styled.images[0], float) - np.asarray(plain.images[0], float)).mean())
        if change <= 0:
            raise RuntimeError("the style did not change the image")
        yield f"style changed the image by {change:.1f} grey levels on average"
        path = write_png(styled.images[0], root / "selftest.png", styled.request)
        again = pipe(read_png_request(path))
        if not np.array_equal(np.asarray(again.images[0]), np.asarray(styled.images[0])):
            raise RuntimeError("the PNG's parameters did not reproduce the image")
        yield f"PNG metadata reproduced the image exactly ({path if folder else 'temporary file'})"
        yield f"selftest passed in {time.perf_counter() - start:.1f} s"
