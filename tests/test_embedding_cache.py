"""Style embeddings are computed once: in memory per pipeline, on disk across pipelines and runs."""

from __future__ import annotations

from pathlib import Path

from instantstyle import StylePipeline
from instantstyle.loading.memory import is_released
from instantstyle.testing import make_style_image

from .conftest import FAST, encode, pixels


def count_encoder_runs(pipe: StylePipeline) -> list[int]:
    calls: list[int] = []
    pipe.resources.image_encoder.model.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_second_call_with_the_same_style_does_not_run_the_encoder(sdxl, tmp_path: Path) -> None:
    style = make_style_image(tmp_path / "fresh.png", seed=101)
    calls = count_encoder_runs(sdxl)
    sdxl(prompt="a fox", style=str(style), **FAST)
    sdxl(prompt="a wolf", style=str(style), **{**FAST, "seed": 8})
    assert len(calls) == 1


def test_same_image_bytes_under_another_name_hit_the_cache(sdxl, tmp_path: Path) -> None:
    style = make_style_image(tmp_path / "a.png", seed=102)
    copy = tmp_path / "b.png"
    copy.write_bytes(style.read_bytes())
    encode(sdxl, str(style))
    calls = count_encoder_runs(sdxl)
    encode(sdxl, str(copy))
    assert calls == []


def test_disk_cache_spares_a_new_pipeline_the_encoder(tiny, tmp_path: Path) -> None:
    style = make_style_image(tmp_path / "style.png", seed=103)
    cache = tmp_path / "cache"
    first = StylePipeline.from_pretrained(str(tiny.sdxl), str(tiny.sdxl_adapter), device="cpu", cache_dir=str(cache))
    request = {"prompt": "a hill", "style": str(style), **FAST}
    expected = pixels(first(**request).images[0])
    assert len(list(cache.glob("*.safetensors"))) == 1
    second = StylePipeline.from_pretrained(
        str(tiny.sdxl), str(tiny.sdxl_adapter), device="cpu", cache_dir=str(cache), low_memory=True
    )
    assert (pixels(second(**request).images[0]) == expected).all()
    assert is_released(second.resources.image_encoder)  # never even loaded


def test_damaged_cache_entry_is_recomputed(tiny, tmp_path: Path) -> None:
    style = make_style_image(tmp_path / "style.png", seed=104)
    cache = tmp_path / "cache"
    pipe = StylePipeline.from_pretrained(str(tiny.sdxl), str(tiny.sdxl_adapter), device="cpu", cache_dir=str(cache))
    embeds = encode(pipe, str(style))
    (entry,) = cache.glob("*.safetensors")
    entry.write_bytes(b"not safetensors")
    pipe.resources.embeddings.memory.tensors.clear()
    assert (encode(pipe, str(style)) == embeds).all()
    assert entry.stat().st_size > 100  # rewritten


def test_cache_folder_that_cannot_be_made_is_a_user_error(tiny, tmp_path: Path) -> None:
    import pytest

    from instantstyle.errors import UserError

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cache folder"):
        StylePipeline.from_pretrained(
            str(tiny.sdxl), str(tiny.sdxl_adapter), device="cpu", cache_dir=str(blocker / "sub")
        )


def test_opening_the_cache_removes_temporary_files_a_killed_writer_left(tmp_path: Path) -> None:
    import os
    import time

    from instantstyle.loading.cache import EmbeddingCache

    stale, fresh = tmp_path / ".abc.safetensors.4242.tmp", tmp_path / ".def.safetensors.4243.tmp"
    for path in (stale, fresh):
        path.write_bytes(b"half written")
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))
    EmbeddingCache.open(tmp_path)
    assert not stale.exists() and fresh.exists()  # another process may still be writing the fresh one
