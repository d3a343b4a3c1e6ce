"""The mode flags on the command line: recorded in the PNG, reproduced by --from, bad input in one line."""

import pytest
from PIL import Image

from instantstyle.core.request import StyleRef, read_png_request

from . import test_cli
from .conftest import pixels
from .test_cli import run

base = test_cli.base  # the same fast SDXL flags as the core CLI tests


def test_mode_flags_are_recorded_and_from_reproduces_the_image(capsys, base, modes, tiny, tmp_path):
    flags = [
        "--style", modes.second_style, "--init-image", modes.init_image, "--mask", modes.left_mask,
        "--control", "canny", "--controlnet", modes.sdxl_controlnet, "--control-scale", "0.5",
        "--composition", modes.init_image, "--region", modes.left_mask, "--region", modes.right_mask,
        "--style-end", "0.5", "--style-fit", "pad",
    ]
    code, _, err = run(capsys, *base, *flags, "-o", tmp_path / "a.png")
    assert code == 0, err
    request = read_png_request(tmp_path / "a.png")
    assert request.style == (StyleRef(str(tiny.style_image)), StyleRef(str(modes.second_style)))
    assert (request.mask, request.strength, request.control, request.control_scale) == (
        str(modes.left_mask), 1.0, "canny", 0.5)
    assert (request.regions, request.style_end, request.style_fit) == (
        (str(modes.left_mask), str(modes.right_mask)), 0.5, "pad")
    code, _, err = run(capsys, "generate", "--from", tmp_path / "a.png", "--device", "cpu", "-o", tmp_path / "b.png")
    assert code == 0, err
    assert (pixels(Image.open(tmp_path / "a.png")) == pixels(Image.open(tmp_path / "b.png"))).all()


def test_several_adapters_from_the_command_line(capsys, base, modes, tiny, tmp_path):
    extra = f"{tiny.sdxl_plus_adapter};style={modes.second_style};blocks=layout;scale=0.5"
    code, _, err = run(capsys, *base, "--adapter", extra, "-o", tmp_path / "a.png")  # base names the main one
    assert code == 0, err
    request = read_png_request(tmp_path / "a.png")
    assert request.adapter == str(tiny.sdxl_adapter)
    assert [(a.path, a.blocks, a.scale) for a in request.adapters] == [(str(tiny.sdxl_plus_adapter), "layout", 0.5)]
    code, _, err = run(capsys, "generate", "--from", tmp_path / "a.png", "--device", "cpu", "-o", tmp_path / "b.png")
    assert code == 0, err
    assert (pixels(Image.open(tmp_path / "a.png")) == pixels(Image.open(tmp_path / "b.png"))).all()


#: (case, flags from (tmp folder with text.png, modes, tiny), expected message): one line, exit 2 each.
BAD_MODE_INPUTS = [
    ("mask-without-init", lambda tmp, modes, tiny: ["--mask", modes.left_mask], "mask needs an init image"),
    ("regions-for-one-style", lambda tmp, modes, tiny: ["--region", modes.left_mask, "--region", modes.right_mask],
     "2 region mask(s) for 1 style(s)"),
    ("style-weight-not-a-number", lambda tmp, modes, tiny: ["--style", f"{modes.second_style}:heavy"],
     "is not a number"),
    ("missing-init", lambda tmp, modes, tiny: ["--init-image", tmp / "nowhere.png"], "init image"),
    ("text-as-mask", lambda tmp, modes, tiny: ["--init-image", modes.init_image, "--mask", tmp / "text.png"],
     "not a readable image"),
    ("strength-runs-no-step", lambda tmp, modes, tiny: ["--init-image", modes.init_image, "--strength", "0.2"],
     "runs no denoising step"),
    ("controlnet-folder-without-config", lambda tmp, modes, tiny: [
        "--control", "canny", "--control-image", modes.init_image, "--controlnet", tmp], "no config.json"),
    ("canny-without-image", lambda tmp, modes, tiny: ["--control", "canny"], "needs --control-image"),
    ("missing-depth-model", lambda tmp, modes, tiny: [
        "--control", "depth", "--control-image", modes.init_image, "--controlnet", modes.sdxl_controlnet,
        "--depth-model", tmp / "nowhere"], "depth model"),
    ("controlnet-as-depth-model", lambda tmp, modes, tiny: [
        "--control", "depth", "--control-image", modes.init_image, "--controlnet", modes.sdxl_controlnet,
        "--depth-model", modes.sdxl_controlnet], "not a depth-estimation model"),
    ("unet-as-controlnet", lambda tmp, modes, tiny: [
        "--control", "canny", "--control-image", modes.init_image, "--controlnet", tiny.sdxl / "unet"],
     "not a ControlNet"),
    ("missing-composition", lambda tmp, modes, tiny: ["--composition", tmp / "nowhere.png"], "composition image"),
    ("window-backwards", lambda tmp, modes, tiny: ["--style-start", "0.9", "--style-end", "0.1"],
     "is after style end"),
    ("unknown-style-fit", lambda tmp, modes, tiny: ["--style-fit", "stretch"], "Invalid value for '--style-fit'"),
    ("further-adapter-without-style", lambda tmp, modes, tiny: ["--adapter", f"{tiny.sdxl_plus_adapter};blocks=layout"],
     "give its style image(s)"),
    ("missing-further-adapter", lambda tmp, modes, tiny: [
        "--adapter", f"{tmp}/missing.safetensors;style={modes.second_style}"], "no such file"),
    ("further-adapter-blocks-malformed", lambda tmp, modes, tiny: [
        "--adapter", f"{tiny.sdxl_plus_adapter};style={modes.second_style};blocks=style,,all"], "empty entry"),
    ("further-adapter-style-missing", lambda tmp, modes, tiny: [
        "--adapter", f"{tiny.sdxl_plus_adapter};style=nowhere.png"], "style image of adapter"),
]


@pytest.mark.parametrize(("change", "message"), [pytest.param(c, m, id=case) for case, c, m in BAD_MODE_INPUTS])
def test_bad_mode_input_is_one_line_and_exit_2(capsys, base, modes, tiny, tmp_path, change, message):
    (tmp_path / "text.png").write_text("not an image")
    code, _, err = run(capsys, *base, "-o", tmp_path / "out.png", *change(tmp_path, modes, tiny))
    assert code == 2, err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "out.png").exists()


def test_batch_job_mode_paths_are_relative_to_the_jobs_file(modes, tiny, tmp_path):
    import json
    import shutil

    from instantstyle.app.batch import read_jobs

    folder = tmp_path / "jobs"
    folder.mkdir()
    for name in ("init.png", "left.png", "right.png", "style2.png"):
        shutil.copy(modes.root / name, folder / name)
    line = {"prompt": "p", "style": ["style2.png", "style2.png"], "init_image": "init.png", "mask": "left.png",
            "regions": ["left.png", "right.png"], "control": "right.png", "controlnet": str(modes.sdxl_controlnet),
            "adapters": [f"{tiny.sdxl_plus_adapter};style=style2.png;region=right.png"]}
    (folder / "jobs.jsonl").write_text(json.dumps(line) + "\n")
    request = read_jobs(folder / "jobs.jsonl").jobs[0].request
    assert request.init_image == str(folder / "init.png") and request.control == str(folder / "right.png")
    assert request.regions == (str(folder / "left.png"), str(folder / "right.png"))
    assert request.adapters[0].style[0].path == str(folder / "style2.png")
