"""Restyling on the surfaces: the command line (flags, --from, the inversion's cost, careless input), sweeps over
the photo's content scale, batch job lines, the Python API, and captions made from the photo."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from instantstyle import Request
from instantstyle.core.caption import caption
from instantstyle.core.request import read_png_request
from instantstyle.modes import restyle
from instantstyle.testing.restyle import tiny_restyle_models

from .conftest import pixels
from .test_cli import run


@pytest.fixture(scope="session")
def rs(tiny, tmp_path_factory):
    return tiny_restyle_models(tmp_path_factory.mktemp("restyle"), tiny)


@pytest.fixture
def restyle_flags(tiny, rs, modes):
    """A fast restyle on the tiny SDXL (a 64 x 64 style image)."""
    return ["generate", "--model", tiny.sdxl, "--adapter", tiny.sdxl_adapter, "--style", modes.second_style,
            "--restyle", rs.photo, "--controlnet", rs.controlnet, "--steps", "2", "--seed", "3", "--device", "cpu"]


def test_generate_restyles_records_the_recipe_and_from_reproduces_it(capsys, restyle_flags, rs, tmp_path):
    code, out, err = run(capsys, *restyle_flags, "--prompt", "a photo of a house", "--restyle-content-scale", "0.2",
                         "-o", tmp_path / "a.png")
    assert code == 0, err
    assert "inverted the photo in" in err and out.strip() == str(tmp_path / "a.png")
    request = read_png_request(tmp_path / "a.png")
    assert (request.restyle, request.restyle_content_scale, request.inversion_steps) == (str(rs.photo), 0.2, 2)
    assert (request.scheduler, request.control, request.control_scale) == ("ddim", "canny", 0.6)
    assert request.negative_prompt == restyle.RECIPE_NEGATIVE
    code, _, err = run(capsys, "generate", "--from", tmp_path / "a.png", "--device", "cpu", "-o", tmp_path / "b.png")
    assert code == 0, err
    assert (pixels(Image.open(tmp_path / "a.png")) == pixels(Image.open(tmp_path / "b.png"))).all()


def _corrupt(tmp):
    (tmp / "broken.png").write_bytes(b"\x89PNG not really")
    return tmp / "broken.png"


#: (case, flags added to a restyle from (tmp folder, rs, modes), expected message): one line, exit 2, no model.
BAD_RESTYLE_INPUTS = [
    ("missing-photo", lambda tmp, rs, modes: ["--prompt", "a house", "--restyle", tmp / "nowhere.png"],
     "photo to restyle"),
    ("corrupt-photo", lambda tmp, rs, modes: ["--prompt", "a house", "--restyle", _corrupt(tmp)],
     "not a readable image"),
    ("with-init-image", lambda tmp, rs, modes: ["--prompt", "a house", "--init-image", modes.init_image],
     "takes no --init-image"),
    ("with-mask", lambda tmp, rs, modes: ["--prompt", "a house", "--mask", modes.left_mask], "takes no --mask"),
    ("style-guidance-without-csd", lambda tmp, rs, modes: ["--prompt", "a house", "--style-guidance", "10"],
     "need a CSD checkpoint (--csd FILE)"),
    ("inversion-steps-0", lambda tmp, rs, modes: ["--prompt", "a house", "--inversion-steps", "0"],
     "inversion steps must be between 1 and 1000"),
    ("inversion-steps-huge", lambda tmp, rs, modes: ["--prompt", "a house", "--inversion-steps", "5000"],
     "inversion steps must be between 1 and 1000"),
    ("photo-over-the-pixel-cap", lambda tmp, rs, modes: ["--prompt", "a house", "--restyle", rs.photo_wide,
                                                         "--max-pixels", "4096"], "over the limit of 4,096 pixels"),
    ("no-prompt-no-caption", lambda tmp, rs, modes: [], "--restyle needs --prompt (what the photo shows) or --caption"),
    ("prompt-and-caption", lambda tmp, rs, modes: ["--prompt", "a house", "--caption"], "not both"),
    ("missing-csd", lambda tmp, rs, modes: ["--prompt", "a house", "--style-guidance", "1", "--csd",
                                            tmp / "nowhere.pth"], "CSD checkpoint"),
    ("missing-caption-model", lambda tmp, rs, modes: ["--caption-model", tmp / "nowhere"], "caption model"),
]


@pytest.mark.parametrize(("change", "message"), [pytest.param(c, m, id=case) for case, c, m in BAD_RESTYLE_INPUTS])
def test_bad_restyle_input_is_one_line_exit_2_before_a_model_loads(capsys, monkeypatch, restyle_flags, rs, modes,
                                                                   tmp_path, change, message):
    from instantstyle.loading import loader

    loads: list[object] = []
    monkeypatch.setattr(loader, "load", lambda *args, **kwargs: loads.append(args))
    code, _, err = run(capsys, *restyle_flags, "-o", tmp_path / "out.png", *change(tmp_path, rs, modes))
    assert (code, loads) == (2, []), err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_restyle_on_a_flow_matching_model_is_one_line_before_it_loads(capsys, monkeypatch, dit, rs, tmp_path):
    from instantstyle.loading import loader

    loads: list[object] = []
    monkeypatch.setattr(loader, "load", lambda *args, **kwargs: loads.append(args))
    code, _, err = run(capsys, "generate", "--model", dit.sd3, "--adapter", dit.sd3_adapter, "--style", rs.style,
                       "--restyle", rs.photo, "--prompt", "a house", "-o", tmp_path / "x.png")
    assert (code, loads) == (2, []) and "made for UNet models" in err and err.count("\n") == 1, err


def test_sweep_rows_over_the_photos_content_scale(capsys, tiny, rs, tmp_path):
    code, out, err = run(capsys, "sweep", "--model", tiny.sdxl, "--adapter", tiny.sdxl_adapter, "--style", rs.style,
                         "--restyle", rs.photo, "--controlnet", rs.controlnet, "--prompt", "a house", "--steps", "2",
                         "--seed", "3", "--device", "cpu", "--blocks", "style", "--scale", "1",
                         "--restyle-content-scale", "0,0.6", "--no-score", "-o", tmp_path / "sheet.png")
    assert code == 0, err
    cells = [tmp_path / "sheet-style-s1-p0.png", tmp_path / "sheet-style-s1-p0.6.png"]
    assert [read_png_request(c).restyle_content_scale for c in cells] == [0.0, 0.6]
    assert np.abs(pixels(Image.open(cells[0])) - pixels(Image.open(cells[1]))).mean() > 1


def test_sweep_restyle_content_scales_need_a_photo(capsys, tiny, rs, tmp_path):
    code, _, err = run(capsys, "sweep", "--model", tiny.sdxl, "--adapter", tiny.sdxl_adapter, "--style", rs.style,
                       "--prompt", "a house", "--restyle-content-scale", "0,0.3", "-o", tmp_path / "sheet.png")
    assert code == 2 and "need --restyle PHOTO" in err


def test_a_batch_job_line_restyles_with_paths_relative_to_its_file(rs, tmp_path):
    import shutil

    from instantstyle.app.batch import read_jobs

    shutil.copy(rs.photo, tmp_path / "photo.png")
    (tmp_path / "jobs.jsonl").write_text(json.dumps({"style": str(rs.style), "restyle": "photo.png",
                                                     "prompt": "a house", "restyle_content_scale": 0.2}) + "\n")
    request = read_jobs(tmp_path / "jobs.jsonl").jobs[0].request
    assert (request.restyle, request.restyle_content_scale, request.mode) == (
        str(tmp_path / "photo.png"), 0.2, "restyle")


def test_the_python_api_restyles_by_keyword(sdxl, rs):
    result = sdxl(restyle=str(rs.photo), style=str(rs.style), prompt="a house", steps=2, seed=3,
                  controlnet=str(rs.controlnet))
    assert result.request.mode == "restyle" and result.images[0].size == (64, 64)


def test_caption_is_what_transformers_generates_for_the_photo(rs):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    photo = Image.open(rs.photo).convert("RGB")
    text = caption(photo, str(rs.captioner))
    processor = AutoProcessor.from_pretrained(str(rs.captioner))
    model = AutoModelForImageTextToText.from_pretrained(str(rs.captioner)).eval()
    ids = model.generate(**processor(images=photo, return_tensors="pt"), num_beams=5, do_sample=False,
                         repetition_penalty=1.5, max_new_tokens=50)
    assert text == processor.batch_decode(ids, skip_special_tokens=True)[0].strip() and text
    assert caption(photo, str(rs.captioner)) == text  # the same photo, the same prompt


def test_restyle_with_caption_makes_the_prompt_from_the_photo(sdxl, rs):
    result = sdxl(Request("", style=str(rs.style), restyle=str(rs.photo), caption_model=str(rs.captioner), steps=2,
                          seed=3, controlnet=str(rs.controlnet)))
    assert result.request.prompt == caption(Image.open(rs.photo).convert("RGB"), str(rs.captioner))
