"""Scores on the command line: `instantstyle score` and `generate --score`, the same numbers as the API."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from instantstyle import Request
from instantstyle.core.request import write_png
from instantstyle.scores.scorer import PNG_SCORES_KEY, SCORE_KEYS, read_png_scores
from instantstyle.scores.scorers import Scorers
from instantstyle.testing.csd import build_csd_checkpoint, csd_state_dict

from .conftest import FAST
from .test_cli import run


def models(tiny, sd15: bool = False) -> list:
    if sd15:
        return ["--model", tiny.sd15, "--adapter", tiny.sd15_adapter, "--device", "cpu"]
    return ["--model", tiny.sdxl, "--adapter", tiny.sdxl_adapter, "--device", "cpu"]


@pytest.fixture(scope="module")
def made(sdxl, tiny, tmp_path_factory):
    """Two PNGs made by the SDXL fixture (their requests inside, content prompt "stripes"), and the result."""
    folder = tmp_path_factory.mktemp("scored")
    result = sdxl(Request("a cat in the house", style=(str(tiny.style_image),), content_prompt="stripes",
                          num_images=2, **FAST))
    paths = [write_png(image, folder / f"made-{i}.png", result.request, i) for i, image in enumerate(result.images)]
    return paths, result


def json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def test_score_prints_one_json_line_per_image_scored_against_the_request_it_carries(capsys, sdxl, made):
    paths, result = made
    code, out, err = run(capsys, "score", *paths, "--json", "--device", "cpu")
    assert code == 0, err
    lines = json_lines(out)
    assert [line["image"] for line in lines] == [str(p) for p in paths]
    for line, expected in zip(lines, Scorers(sdxl).score(result), strict=True):
        assert set(line) == {"image", *SCORE_KEYS}
        for key in ("clip_text", "clip_style", "content_leak"):
            assert line[key] == pytest.approx(expected.get(key), abs=1e-6)
        assert line["csd_style"] is None
    assert "note: csd_style not scored" in err


def test_score_flags_replace_what_the_images_carry(capsys, sdxl, tiny, made):
    paths, _ = made
    code, out, err = run(capsys, "score", paths[0], "--prompt", "a dog", "--style", f"{tiny.style_image}:1",
                         "--style", f"{tiny.content_image}:3", "--content-prompt", "a house", "--json", *models(tiny))
    assert code == 0, err
    expected = Scorers(sdxl).scorer().score([paths[0]], "a dog", [f"{tiny.style_image}:1", f"{tiny.content_image}:3"],
                                   "a house")[0]
    line = json_lines(out)[0]
    assert [line[k] for k in SCORE_KEYS] == pytest.approx([expected.get(k) for k in SCORE_KEYS[:3]] + [None])


def test_score_prints_a_table_by_default(capsys, made):
    paths, _ = made
    code, out, err = run(capsys, "score", *paths, "--device", "cpu")
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["image", *SCORE_KEYS]
    assert [row.split()[0] for row in rows] == [str(p) for p in paths]
    assert all(row.split()[-1] == "-" for row in rows)  # no CSD: a dash


def test_score_loads_no_denoiser(capsys, made, monkeypatch):
    """Only the encoders: constructing a UNet would fail the run."""
    import diffusers

    def refuse(*_, **__):
        raise AssertionError("score built a UNet")

    monkeypatch.setattr(diffusers.UNet2DConditionModel, "__init__", refuse)
    code, _, err = run(capsys, "score", made[0][0], "--device", "cpu")
    assert code == 0, err


def test_score_with_a_csd_checkpoint_gives_csd_style(capsys, sdxl, tiny, made, tmp_path):
    checkpoint = build_csd_checkpoint(tmp_path / "checkpoint.pth", "training")
    code, out, err = run(capsys, "score", made[0][0], "--csd", checkpoint, "--json", "--device", "cpu")
    assert code == 0, err
    expected = Scorers(sdxl).score(made[1], csd=checkpoint)[0].csd_style
    assert json_lines(out)[0]["csd_style"] == pytest.approx(expected, abs=1e-6)
    assert "csd_style" not in err


def test_score_vit_h_adapter_uses_the_content_text_encoder_tower(capsys, sd15, tiny):
    flags = ["score", tiny.content_image, "--prompt", "a house", "--style", tiny.style_image, "--json",
             *models(tiny, sd15=True)]
    code, out, err = run(capsys, *flags)
    assert code == 0, err
    assert json_lines(out)[0]["clip_text"] is None and "note: clip_text not scored" in err
    code, out, err = run(capsys, *flags, "--content-text-encoder", tiny.content_text_encoder)
    assert code == 0, err
    expected = Scorers(sd15).scorer(str(tiny.content_text_encoder)).score([tiny.content_image], "a house",
                                                                 str(tiny.style_image))[0]
    assert json_lines(out)[0]["clip_text"] == pytest.approx(expected.clip_text, abs=1e-6)


def careless(tmp, tiny):
    """Files a careless user passes."""
    (tmp / "text.png").write_text("not an image")
    Image.new("RGB", (32, 32)).save(tmp / "plain.png")  # no instantstyle parameters
    (tmp / "folder.png").mkdir(exist_ok=True)

    class Payload:
        def __reduce__(self):
            return (exec, ("open('/dev/null').close()",))

    torch.save({"model_state_dict": csd_state_dict(), "args": Payload()}, tmp / "evil.pth")
    return tmp


SCORE_BAD_INPUTS = [
    ("no-images", lambda t, m: [], "give the images to score"),
    ("missing-image", lambda t, m: [t / "missing.png", "--prompt", "x"], "no such file"),
    ("text-as-image", lambda t, m: [t / "text.png", "--prompt", "x"], "not a readable image"),
    ("folder-as-image", lambda t, m: [t / "folder.png", "--prompt", "x"], "is a folder"),
    ("nothing-to-score-against", lambda t, m: [t / "plain.png"], "nothing to score it against"),
    ("empty-prompt", lambda t, m: [t / "plain.png", "--prompt", " "], "--prompt is empty"),
    ("missing-style", lambda t, m: [t / "plain.png", "--style", t / "nope.png"], "no such file"),
    ("style-weight-not-a-number", lambda t, m: [t / "plain.png", "--style", f"{m.style_image}:heavy"],
     "not a number"),
    ("style-weights-all-zero", lambda t, m: [t / "plain.png", "--style", f"{m.style_image}:0"], "must not all be 0"),
    ("missing-csd", lambda t, m: [t / "plain.png", "--prompt", "x", "--csd", t / "nope.pth"], "no such file"),
    ("csd-pickle-running-code", lambda t, m: [t / "plain.png", "--prompt", "x", "--csd", t / "evil.pth"],
     "refused, its pickle calls exec"),
    ("missing-model", lambda t, m: [t / "plain.png", "--prompt", "x", "--model", t / "nowhere"],
     "no such file or folder"),
    ("text-as-adapter", lambda t, m: [t / "plain.png", "--prompt", "x", "--adapter", t / "text.png"],
     "not a readable weights file"),
    ("image-encoder-as-text-tower", lambda t, m: [t / "plain.png", "--prompt", "x", "--content-text-encoder",
                                                  m.adapters / "sdxl_models" / "image_encoder"], "no CLIP tokenizer"),
    ("unknown-flag", lambda t, m: [t / "plain.png", "--frobnicate"], "No such option"),
    ("absurd-prompt", lambda t, m: [t / "plain.png", "--prompt", "x" * 10_001], "--prompt is 10,001 characters"),
    ("absurd-content-prompt", lambda t, m: [t / "plain.png", "--prompt", "x", "--content-prompt", "y" * 10_001],
     "--content-prompt is 10,001 characters; the most is 10,000"),
]


@pytest.mark.parametrize(("change", "message"), [pytest.param(c, m, id=case) for case, c, m in SCORE_BAD_INPUTS])
def test_score_bad_input_is_one_line_and_exit_2(capsys, tiny, tmp_path, change, message):
    args = change(careless(tmp_path, tiny), tiny)
    given = {"--model", "--adapter"} & set(args)
    model_flags = [a for flag, value in zip(*[iter(models(tiny)[:4])] * 2, strict=True) if flag not in given
                   for a in (flag, value)]
    code, out, err = run(capsys, "score", *args, *model_flags, "--device", "cpu")
    assert code == 2, err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert out == ""


def test_score_refuses_images_made_with_different_models_without_model(capsys, sd15, tiny, made, tmp_path):
    other = sd15(Request("a cat", style=(str(tiny.style_image),), **FAST))
    path = write_png(other.images[0], tmp_path / "sd15.png", other.request)
    code, _, err = run(capsys, "score", made[0][0], path, "--device", "cpu")
    assert code == 2 and "different models" in err and "give --model" in err


def test_generate_score_prints_the_scores_and_stores_them_in_the_png(capsys, sdxl, tiny, tmp_path):
    flags = ["generate", *models(tiny), "--style", tiny.style_image, "--prompt", "a cat", "--content-prompt",
             "stripes", "--steps", 2, "--width", 64, "--height", 64, "--seed", 7, "-o", tmp_path / "a.png"]
    code, out, err = run(capsys, *flags, "--score")
    assert code == 0, err
    path, header, row = out.splitlines()
    assert path == str(tmp_path / "a.png") and header.split() == ["image", *SCORE_KEYS]
    stored = read_png_scores(path)
    made = sdxl(Request("a cat", style=(str(tiny.style_image),), content_prompt="stripes", **FAST))
    expected = Scorers(sdxl).score(made)[0]
    assert [stored.get(k) for k in SCORE_KEYS[:3]] == pytest.approx([expected.get(k) for k in SCORE_KEYS[:3]])
    assert row.split()[1:4] == [f"{expected.get(k):.3f}" for k in SCORE_KEYS[:3]]


def test_generate_without_score_stores_no_scores(capsys, tiny, tmp_path):
    flags = ["generate", *models(tiny), "--style", tiny.style_image, "--prompt", "a cat", "--steps", 2, "--width",
             64, "--height", 64, "--seed", 7, "-o", tmp_path / "a.png"]
    code, out, err = run(capsys, *flags)
    assert code == 0, err
    assert out.split() == [str(tmp_path / "a.png")]
    assert PNG_SCORES_KEY not in Image.open(tmp_path / "a.png").info


def test_generate_with_a_refused_csd_fails_before_generating(capsys, tiny, tmp_path):
    careless(tmp_path, tiny)
    flags = ["generate", *models(tiny), "--style", tiny.style_image, "--prompt", "a cat", "--steps", 2, "--width",
             64, "--height", 64, "--csd", tmp_path / "evil.pth", "-o", tmp_path / "a.png"]
    code, _, err = run(capsys, *flags)
    assert code == 2 and "refused" in err and err.count("\n") == 1
    assert not (tmp_path / "a.png").exists()
