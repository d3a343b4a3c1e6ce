"""Every image read is held to one pixel cap (``Runtime.max_pixels``, ``--max-pixels``), read from its header before
a pixel is decoded: references, init, mask, control, regions, composition and content images, on every surface."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest

from instantstyle import Request, UserError
from instantstyle.app.batch import run_batch
from instantstyle.core.preflight import check_request
from instantstyle.files.images import MAX_PIXELS, PIL_PIXEL_LIMIT, image_size, load_image
from instantstyle.loading.runtime import Runtime
from instantstyle.scores.scorers import Scorers
from instantstyle.testing import make_style_image

from .conftest import FAST, with_resources
from .test_cli import run

CAP = 64 * 64  # the lowest cap there is; the test images below are 80 x 80


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(path: Path, side: int = 12000, whole: bool = False) -> Path:
    """A grey PNG of ``side`` x ``side`` pixels in a small file: complete (``whole``: all rows, zlib-streamed, a few
    hundred KB) or cut after its first row (any attempt to decode it fails; only its header can be read)."""
    deflate = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte + one grey byte per pixel
    data = b"".join(deflate.compress(row) for _ in range(side if whole else 1)) + deflate.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    chunks = png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)
    return path


@pytest.fixture
def big(tmp_path) -> str:
    return str(make_style_image(tmp_path / "big.png", (80, 80), seed=3))


def test_an_image_over_the_cap_is_refused_from_its_header_without_decoding(tmp_path):
    """The file's pixel data is cut short: decoding it would fail, so the message shows only the header was read."""
    path = huge_png(tmp_path / "bomb.png")
    with pytest.raises(UserError, match=r"12000x12000 is over the limit of 40,000,000 pixels"):
        load_image(path, "style image")
    with pytest.raises(UserError, match="12000x12000 is over the limit"):
        image_size(path, "mask")


@pytest.mark.parametrize("cap", [0, CAP - 1, PIL_PIXEL_LIMIT + 1, 2.5, True])
def test_a_pixel_cap_outside_what_pil_can_hold_is_one_line(cap):
    with pytest.raises(UserError, match="pixel cap must be"):
        Runtime(max_pixels=cap)


@pytest.mark.parametrize(
    ("fields", "what"),
    [
        ({"style": "BIG"}, "style image"),
        ({"content_image": "BIG"}, "content image"),
        ({"init_image": "BIG"}, "init image"),
        ({"init_image": "SMALL", "mask": "BIG"}, "mask"),
        ({"control": "canny", "control_image": "BIG"}, "control image"),
        ({"composition": "BIG"}, "composition image"),
        ({"regions": ("BIG",)}, "region mask"),
    ],
)
def test_every_kind_of_input_image_is_held_to_the_cap(tiny, big, fields, what):
    swap = {"BIG": big, "SMALL": str(tiny.content_image)}
    fields = {k: tuple(swap[x] for x in v) if isinstance(v, tuple) else swap.get(v, v) for k, v in fields.items()}
    request = Request("a cat", **{"style": str(tiny.content_image), **fields})
    check_request(request, max_pixels=80 * 80)  # at the cap: fine
    with pytest.raises(UserError, match=rf"^{what} .*80x80 is over the limit of 6,399 pixels"):
        check_request(request, max_pixels=80 * 80 - 1)


def test_the_pipelines_own_reads_use_its_runtimes_cap(sdxl, tiny, big):
    """The Python API holds every image to its pipeline's runtime's cap too."""
    capped = with_resources(sdxl, runtime=sdxl.resources.runtime.replace(max_pixels=CAP))
    with pytest.raises(UserError, match="style image .* over the limit of 4,096 pixels"):
        capped(Request("a cat", style=big, **FAST))
    with pytest.raises(UserError, match="init image .* over the limit of 4,096 pixels"):
        capped(Request("a cat", style=str(tiny.content_image), init_image=big, **FAST))


def test_the_default_cap_is_forty_megapixels():
    assert Runtime().max_pixels == MAX_PIXELS == 40_000_000


@pytest.fixture
def cli(capsys):
    """The console entry point in-process: (exit code, stdout + stderr)."""

    def both(*args) -> tuple[int, str]:
        code, out, err = run(capsys, *args)
        return code, out + err

    return both


@pytest.mark.parametrize("command", ["generate", "sweep"])
def test_max_pixels_reaches_generate_and_sweep_before_a_model_loads(cli, big, tmp_path, command):
    flags = ["--model", tmp_path / "no-model-needed", "--style", big, "--prompt", "a cat", "-o", tmp_path / "o.png"]
    rows = ["--blocks", "style"] if command == "sweep" else []  # without rows, sweep reads the model's presets first
    code, output = cli(command, *flags, *rows, "--max-pixels", CAP)
    assert code == 2 and output.count("\n") == 1 and "80x80 is over the limit of 4,096 pixels" in output


@pytest.mark.parametrize("value", ["0", "lots", "999999999999"])
def test_a_careless_max_pixels_is_one_line(cli, tiny, tmp_path, value):
    code, output = cli("generate", "--style", tiny.style_image, "--prompt", "a cat", "-o", tmp_path / "o.png",
                       "--max-pixels", value)
    assert code == 2 and output.count("\n") == 1 and ("max-pixels" in output or "pixel cap" in output)


def test_a_batch_job_naming_an_image_over_the_cap_is_skipped_with_its_line(sdxl, tiny, big, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join(json.dumps({"id": i, "prompt": "a cat", "style": s, **FAST})
                              for i, s in (("ok", str(tiny.content_image)), ("big", big))) + "\n")
    report = run_batch(jobs, tmp_path / "out", pipeline=sdxl, runtime=Runtime(device="cpu", max_pixels=CAP))
    assert report.done == 1 and len(report.problems) == 1
    problem = report.problems[0]
    assert problem.startswith("jobs.jsonl line 2: style image") and "over the limit of 4,096" in problem


def test_max_pixels_reaches_the_batch_command(cli, tiny, big, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"prompt": "a cat", "style": big}) + "\n")
    code, output = cli("batch", jobs, "-o", tmp_path / "out", "--max-pixels", CAP, "--model", tiny.sdxl)
    assert code == 2 and "jobs.jsonl line 1: style image" in output and "over the limit of 4,096" in output


@pytest.mark.parametrize("command", ["score", "probe-blocks"])
def test_max_pixels_reaches_score_and_probe_blocks_before_a_model_loads(cli, tiny, big, tmp_path, command):
    models = ["--model", tmp_path / "no-model-needed", "--adapter", tiny.sdxl_adapter]
    flags = {"score": [big, "--prompt", "a cat"],
             "probe-blocks": ["--style", big, "--prompt", "a cat", "-o", tmp_path / "probe"]}[command]
    code, output = cli(command, *flags, *models, "--max-pixels", CAP)
    assert code == 2 and output.count("\n") == 1 and "80x80 is over the limit of 4,096 pixels" in output, output


def test_scores_hold_the_images_they_read_to_the_pipelines_cap(sdxl, tiny, big):
    """Scored images and style references named by path, through the pipeline's scorer (the UI's and the API's)."""
    capped = with_resources(sdxl, runtime=sdxl.resources.runtime.replace(max_pixels=CAP))
    scorer = Scorers(capped).scorer()
    with pytest.raises(UserError, match="^image .* over the limit of 4,096 pixels"):
        scorer.score([big], "a cat")
    with pytest.raises(UserError, match="^style image .* over the limit of 4,096 pixels"):
        scorer.score([str(tiny.content_image)], "a cat", style=big)
    assert scorer.score([str(tiny.content_image)], "a cat", style=str(tiny.content_image))[0].clip_style is not None
