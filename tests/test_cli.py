"""The command line: same pixels as the API, PNG round trip, and one-line errors (exit 2) for bad input."""

import subprocess
import sys

import pytest
from PIL import Image

from instantstyle.app.cli import entry
from instantstyle.core.request import read_png_request

from .conftest import pixels


def run(capsys, *args) -> tuple[int, str, str]:
    """Run the console entry point in-process; returns (exit code, stdout, stderr)."""
    try:
        entry([str(a) for a in args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def base(tiny, tmp_path):
    """Flags for a fast generation on the tiny SDXL fixture."""
    return [
        "generate",
        "--model",
        tiny.sdxl,
        "--adapter",
        tiny.sdxl_adapter,
        "--style",
        tiny.style_image,
        "--prompt",
        "a cat",
        "--steps",
        "2",
        "--width",
        "64",
        "--height",
        "64",
        "--seed",
        "7",
        "--device",
        "cpu",
    ]


def test_cli_and_api_give_the_same_pixels(capsys, base, sdxl, tiny, tmp_path):
    code, out, err = run(
        capsys, *base, "--blocks", "style+layout", "--content-prompt", "a dog", "-o", tmp_path / "a.png"
    )
    assert code == 0, err
    api = sdxl(
        prompt="a cat",
        style=str(tiny.style_image),
        steps=2,
        width=64,
        height=64,
        seed=7,
        blocks="style+layout",
        content_prompt="a dog",
    )
    assert (pixels(Image.open(tmp_path / "a.png").convert("RGB")) == pixels(api.images[0])).all()


def test_png_carries_every_parameter_and_from_reproduces_it(capsys, base, tmp_path):
    assert run(capsys, *base, "--scale", "0.8", "-o", tmp_path / "a.png")[0] == 0
    request = read_png_request(tmp_path / "a.png")
    assert (request.scale, request.seed, request.steps, request.prompt) == (0.8, 7, 2, "a cat")
    code, _, err = run(capsys, "generate", "--from", tmp_path / "a.png", "--device", "cpu", "-o", tmp_path / "b.png")
    assert code == 0, err
    assert (pixels(Image.open(tmp_path / "a.png")) == pixels(Image.open(tmp_path / "b.png"))).all()


def test_flags_override_the_png_parameters(capsys, base, tmp_path):
    run(capsys, *base, "-o", tmp_path / "a.png")
    run(capsys, "generate", "--from", tmp_path / "a.png", "--seed", "8", "--device", "cpu", "-o", tmp_path / "b.png")
    assert read_png_request(tmp_path / "b.png").seed == 8


def test_several_images_get_numbered_names(capsys, base, tmp_path):
    code, out, _ = run(capsys, *base, "--num-images", "2", "-o", tmp_path / "x.png")
    assert code == 0
    assert out.split() == [str(tmp_path / "x-1.png"), str(tmp_path / "x-2.png")]


def test_blocks_lists_the_models_attention_blocks(capsys, tiny):
    code, out, _ = run(capsys, "blocks", "--model", tiny.sdxl)
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith("up_blocks.0.attentions.1 "))
    assert line.split()[1:] == ["2", "style,", "style+layout,", "all"]


def careless_files(tmp):
    """Files a careless user passes: an empty image, a text file named .png, an output that exists."""
    (tmp / "empty.png").write_bytes(b"")
    (tmp / "text.png").write_text("not an image")
    (tmp / "exists.png").write_bytes(b"x")
    return tmp


#: (case, flags to change from the files and fixtures, expected message): each fails in one line with exit 2.
BAD_INPUTS = [
    ("missing-style", lambda tmp, tiny: ["--style", tmp / "missing.png"], "no such file"),
    ("empty-style", lambda tmp, tiny: ["--style", tmp / "empty.png"], "empty"),
    ("text-as-style", lambda tmp, tiny: ["--style", tmp / "text.png"], "not a readable image"),
    ("unknown-block", lambda tmp, tiny: ["--blocks", "up_blocks.7"], "matches no attention layer"),
    ("scale-not-a-number", lambda tmp, tiny: ["--scale", "abc"], "not a valid float"),
    ("zero-steps", lambda tmp, tiny: ["--steps", "0"], "steps must be between"),
    ("text-as-adapter", lambda tmp, tiny: ["--adapter", tmp / "text.png"], "not a readable weights file"),
    ("adapter-of-another-model", lambda tmp, tiny: ["--adapter", tiny.sd15_adapter], "does not fit"),
    ("missing-model", lambda tmp, tiny: ["--model", tmp / "nowhere"], "no such file or folder"),
    ("uncached-hub-model", lambda tmp, tiny: ["--model", "someone/uncached-model"], "not in the Hugging Face cache"),
    ("unwritable-output", lambda tmp, tiny: ["-o", "/etc/passwd/out.png"], "its folder /etc/passwd: is a file"),
    ("output-not-png", lambda tmp, tiny: ["-o", tmp / "out.jpg"], "must end in .png"),
    ("output-exists", lambda tmp, tiny: ["-o", tmp / "exists.png"], "--overwrite"),
    ("text-as-content-image", lambda tmp, tiny: ["--content-image", tmp / "text.png"], "content image"),
    ("unknown-flag", lambda tmp, tiny: ["--frobnicate"], "No such option"),
]


@pytest.mark.parametrize(("change", "message"), [pytest.param(c, m, id=case) for case, c, m in BAD_INPUTS])
def test_bad_input_is_one_line_and_exit_2(capsys, base, tiny, tmp_path, change, message):
    args = base + ["-o", tmp_path / "out.png"] + change(careless_files(tmp_path), tiny)
    code, _, err = run(capsys, *args)
    assert code == 2, err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "out.png").exists()


def test_from_a_png_without_parameters_is_an_error(capsys, tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    code, _, err = run(capsys, "generate", "--from", tmp_path / "plain.png", "-o", tmp_path / "o.png")
    assert code == 2 and "no instantstyle parameters" in err


def test_console_script_exits_2_without_traceback(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "instantstyle",
            "generate",
            "--style",
            tmp_path / "none.png",
            "--prompt",
            "x",
            "-o",
            tmp_path / "o.png",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: style image") and "Traceback" not in done.stderr


def test_selftest_passes(capsys):
    code, out, err = run(capsys, "selftest")
    assert code == 0, err
    assert "selftest passed" in out


def test_saved_style_file_replaces_the_image(capsys, base, tmp_path):
    code, out, err = run(capsys, *base, "--save-style", tmp_path / "s.safetensors", "-o", tmp_path / "a.png")
    assert code == 0, err
    args = [a if a != base[base.index("--style") + 1] else tmp_path / "s.safetensors" for a in base]
    assert run(capsys, *args, "-o", tmp_path / "b.png")[0] == 0
    assert (pixels(Image.open(tmp_path / "a.png")) == pixels(Image.open(tmp_path / "b.png"))).all()


def test_from_a_png_with_hostile_metadata_is_one_line_exit_2(capsys, tmp_path):
    from instantstyle.core.request import PNG_KEY
    from instantstyle.files.atomic import save_png_atomically

    deep = "[" * 100_000 + "]" * 100_000
    path = save_png_atomically(Image.new("RGB", (8, 8)), tmp_path / "deep.png", {PNG_KEY: deep})
    code, _, err = run(capsys, "generate", "--from", path, "-o", tmp_path / "out.png")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "nested more than" in err


@pytest.mark.parametrize("hostile", ["bomb", "huge text"])
def test_hostile_images_are_one_line_exit_2(capsys, base, tmp_path, hostile):
    from instantstyle.core.request import PNG_KEY
    from instantstyle.testing.hostile import png_claiming_size, png_with_huge_text

    if hostile == "bomb":
        args = [*base[:5], "--style", png_claiming_size(tmp_path / "bomb.png", 20000, 20000), *base[7:]]
    else:
        args = ["generate", "--from", png_with_huge_text(tmp_path / "huge.png", PNG_KEY)]
    code, _, err = run(capsys, *args, "-o", tmp_path / "out.png")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1


def test_a_model_whose_default_size_is_below_64_asks_for_a_size_not_got_32(capsys, small_default, tiny, tmp_path):
    flags = ["generate", "--model", small_default, "--adapter", tiny.sdxl_adapter, "--style", tiny.style_image,
             "--prompt", "a cat", "--steps", "1", "--device", "cpu", "-o", tmp_path / "o.png"]
    code, _, err = run(capsys, *flags)
    assert code == 2 and err == "error: the model's default size 32 is below 64; pass --width/--height\n"
    code, _, err = run(capsys, *flags, "--width", "64")
    assert code == 2 and "default size 32 is below 64" in err  # the height still falls back
