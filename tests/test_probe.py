"""Probing blocks: every block alone (plus all and none) is generated, scored and ranked; its presets save and load."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from instantstyle import Request, UserError
from instantstyle.core.blocks import BlockInfo, expand_preset_ref, list_blocks, read_presets, resolve_blocks
from instantstyle.core.request import read_png_request
from instantstyle.scores.pareto import cell_points, pareto_front
from instantstyle.scores.plots import save_plot, scatter_plot
from instantstyle.scores.preset_file import write_presets
from instantstyle.scores.probe import ALL, NONE, probe_cells, probe_presets, probe_requests, probe_table, rank_blocks
from instantstyle.scores.scorer import Scores
from instantstyle.scores.scorers import Scorers

from .conftest import FAST, pixels
from .test_cli import run

BLOCKS = [BlockInfo("down_blocks.2.attentions.1", 2, ("layout",)), BlockInfo("up_blocks.0.attentions.1", 2, ("style",))]


@pytest.fixture(scope="module")
def probed(sdxl, tiny):
    """The probe of the tiny SDXL with one style and one prompt, scored with a content prompt."""
    base = Request("a cat", style=(str(tiny.style_image),), **FAST)
    blocks = list_blocks(sdxl.resources.layers, sdxl.resources.family.name)
    scorer = Scorers(sdxl).scorer()
    results = []
    for job in probe_requests(base, blocks, content_prompts=["stripes"]):
        made = sdxl(job.request)
        results.append((job, scorer.score_request(made.images, made.request, job.content_prompt)[0]))
    return blocks, results


def test_probe_requests_are_each_block_alone_at_scale_1_then_all_and_none():
    base = Request("a cat", style=("a.png", "b.png"), content_prompt="stripes", seed=1)
    jobs = probe_requests(base, BLOCKS, prompts=["a cat", "a dog"])
    assert len(jobs) == (len(BLOCKS) + 2) * 2 * 2
    assert [j.block for j in jobs[::4]] == [b.name for b in BLOCKS] + [ALL, NONE]
    first = jobs[0].request
    assert (first.blocks, first.scale, first.num_images) == ("down_blocks.2.attentions.1", 1.0, 1)
    assert (jobs[-1].request.blocks, jobs[-1].request.scale) == ("all", 0.0)
    # the content prompt is scored as leak, never subtracted
    assert all(j.request.content_prompt is None and j.content_prompt == "stripes" for j in jobs)
    assert {(j.request.style[0].path, j.request.prompt) for j in jobs[:4]} == {
        ("a.png", "a cat"), ("a.png", "a dog"), ("b.png", "a cat"), ("b.png", "a dog")}


def test_probe_needs_one_content_prompt_per_style_or_one_for_all():
    base = Request("a cat", style=("a.png", "b.png"))
    assert [j.content_prompt for j in probe_requests(base, BLOCKS, content_prompts=["x", "y"])][:2] == ["x", "y"]
    with pytest.raises(UserError, match="one per style"):
        probe_requests(base, BLOCKS, content_prompts=["x", "y", "z"])
    with pytest.raises(UserError, match="no attention blocks"):
        probe_requests(base, [])


def test_probe_ranks_every_block_of_the_model_by_style_score(probed):
    blocks, results = probed
    rows, key = rank_blocks(results, blocks)
    assert key == "clip_style"  # no CSD given
    ranked = [r for r in rows if r.rank is not None]
    assert sorted(r.block for r in ranked) == sorted(b.name for b in blocks)
    assert [r.rank for r in ranked] == list(range(1, len(blocks) + 1))
    styles = [r.scores.clip_style for r in ranked]
    assert styles == sorted(styles, reverse=True)
    assert [r.block for r in rows[-2:]] == [ALL, NONE]
    assert all(r.scores.content_leak is not None and r.count == 1 for r in rows)
    table = probe_table(rows, key)
    assert all(b.name in table for b in blocks) and "clip_style" in table.splitlines()[0]


def test_probe_plot_opens_as_an_image(probed, tmp_path):
    blocks, results = probed
    rows, key = rank_blocks(results, blocks)
    cells = probe_cells(rows)
    points = cell_points(cells, key)
    path = save_plot(scatter_plot(points, [c.label for c in cells], key, "clip_text", front=pareto_front(points)),
                     tmp_path / "probe.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.height >= 540


def test_probe_presets_save_and_load_back_as_blocks_specs(probed, sdxl, tiny, tmp_path):
    blocks, results = probed
    rows, _ = rank_blocks(results, blocks)
    presets = probe_presets(rows)
    assert presets["style"] == rows[0].block
    assert presets["style-top3"].split(",") == [r.block for r in rows[:3]]
    assert set(presets) == {"style", "style-top2", "style-top3", "layout", "style+layout"}
    path = write_presets(tmp_path / "presets.json", presets)
    for name, spec in presets.items():
        expanded = expand_preset_ref(f"@{path}:{name}")
        assert expanded == spec
        assert resolve_blocks(expanded, sdxl.resources.layers, sdxl.resources.family.name)
    image = sdxl(Request("a cat", style=(str(tiny.style_image),), blocks=expand_preset_ref(f"@{path}:style"), **FAST))
    assert image.images[0].size == (64, 64)


def test_presets_without_leak_scores_have_no_layout():
    rows, _ = rank_blocks([(j, Scores(clip_style=0.1 * n)) for n, j in
                           enumerate(probe_requests(Request("x", style=("a.png",)), BLOCKS))], BLOCKS)
    assert probe_presets(rows) == {"style": "up_blocks.0.attentions.1",
                                   "style-top2": "up_blocks.0.attentions.1,down_blocks.2.attentions.1"}


def test_presets_file_merges_and_replaces_by_name(tmp_path):
    path = tmp_path / "p.json"
    write_presets(path, {"a": "up_blocks.0.attentions.1", "b": "mid_block"})
    write_presets(path, {"b": "down_blocks.2=0.5,up_blocks.0"})
    assert read_presets(path) == {"a": "up_blocks.0.attentions.1", "b": "down_blocks.2=0.5,up_blocks.0"}
    write_presets(path, {"c": "style"}, merge=False)
    assert json.loads(path.read_text()) == {"c": "style"}


def test_a_preset_reference_is_relative_to_the_base_folder(tmp_path):
    write_presets(tmp_path / "p.json", {"mine": "up_blocks.0.attentions.1=0.8"})
    assert expand_preset_ref("@p.json:mine", base=tmp_path) == "up_blocks.0.attentions.1=0.8"
    assert expand_preset_ref("style,layout=0.5") == "style,layout=0.5"  # not a reference: unchanged


@pytest.mark.parametrize("content, ref, message", [
    (None, "@missing.json:style", "no such file"),
    ('{"style": "up_blocks.0"', "@p.json:style", "invalid JSON"),
    ('{"style": ' + "[" * 100_000 + "]" * 100_000 + "}", "@p.json:style", "nested more than"),
    ('["style"]', "@p.json:style", "non-empty JSON object"),
    ('{"style": "up_blocks.0=abc"}', "@p.json:style", "preset 'style' is not a blocks spec"),
    ('{"a:b": "style"}', "@p.json:a", "without ':'"),
    ('{"x": "@other.json:y"}', "@p.json:x", "another presets file"),
    ('{"style": "up_blocks.0"}', "@p.json:layout", "has no preset 'layout'; it has: style"),
    ('{"style": "up_blocks.0"}', "@p.json", "@FILE:NAME"),
])
def test_bad_presets_are_one_line_errors(tmp_path, content, ref, message):
    if content is not None:
        (tmp_path / "p.json").write_text(content)
    with pytest.raises(UserError, match=message) as err:
        expand_preset_ref(ref, base=tmp_path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("name", "message"), [
    ("/dev/zero", "not a regular file"),
    ("folder.json", "is a folder"),
    ("binary.json", "not UTF-8 text"),
    ("huge.json", "over 1 MB"),
])
def test_a_presets_file_that_is_not_one_is_one_line_without_reading_it_whole(capsys, tiny, tmp_path, name, message):
    """Read at most its cap: /dev/zero never ends and the sparse 2 GB file is never read whole."""
    (tmp_path / "folder.json").mkdir()
    (tmp_path / "binary.json").write_bytes(bytes(range(128, 256)))
    with open(tmp_path / "huge.json", "wb") as file:
        file.truncate(2**31)
    path = name if name.startswith("/") else str(tmp_path / name)
    with pytest.raises(UserError, match=f"^presets file {path}: {message}"):
        read_presets(path)
    code, out, err = run(capsys, "generate", "--model", tmp_path / "no-model-needed", "--style", tiny.style_image,
                         "--prompt", "a cat", "--blocks", f"@{path}:style", "-o", tmp_path / "o.png")
    assert code == 2 and err.count("\n") == 1 and message in err, err


# --- the probe-blocks command ----------------------------------------------------------------------------


def probe_flags(tiny) -> list:
    return ["probe-blocks", "--model", tiny.sdxl, "--adapter", tiny.sdxl_adapter, "--steps", 2, "--width", 64,
            "--height", 64, "--seed", 7, "--device", "cpu"]


@pytest.fixture(scope="module")
def probe_run(tiny, tmp_path_factory):
    """``instantstyle probe-blocks`` on the tiny SDXL: one style, one prompt, a content prompt, presets saved (into
    a folder that does not exist yet: it is made, as ``--output``'s is)."""
    from click.testing import CliRunner

    from instantstyle.app.cli import main

    folder = tmp_path_factory.mktemp("probe-cli")
    result = CliRunner().invoke(main, [str(a) for a in [
        *probe_flags(tiny), "--style", tiny.style_image, "--prompt", "a cat", "--content-prompt", "stripes",
        "--batch-size", 4, "-o", folder / "probe", "--save-presets", folder / "saved" / "presets.json"]])
    assert result.exit_code == 0, result.output
    out, err = result.stdout, result.stderr
    return folder, out, err


def test_probe_blocks_prints_every_block_of_the_model_ranked_by_style_score(sdxl, probe_run):
    _, out, _ = probe_run
    lines = out.splitlines()
    header, body = lines[0].split(), [line.split() for line in lines[1:] if line.split()[0].isdigit()]
    assert header == ["rank", "block", "layers", "clip_style", "clip_text", "content_leak", "images"]
    blocks = list_blocks(sdxl.resources.layers, sdxl.resources.family)
    assert sorted(row[1] for row in body) == sorted(b.name for b in blocks)
    assert [int(row[0]) for row in body] == list(range(1, len(body) + 1))
    styles = [float(row[3]) for row in body]
    assert styles == sorted(styles, reverse=True)
    assert [line.split()[1] for line in lines[len(body) + 1 : len(body) + 3]] == [ALL, NONE]


def test_probe_blocks_writes_each_scored_image_the_plot_csv_and_table(sdxl, probe_run):
    from instantstyle.scores.scorer import read_png_scores

    folder, out, _ = probe_run
    probe = folder / "probe"
    images = sorted(probe.glob("*-style1-prompt1.png"))
    assert len(images) == len(list_blocks(sdxl.resources.layers, sdxl.resources.family)) + 2
    for path in images:
        request = read_png_request(path)
        expected = {ALL: ("all", 1.0), NONE: ("all", 0.0)}.get(path.name.split("-style")[0])
        assert (request.blocks, request.scale) == (expected or (path.name.split("-style")[0], 1.0))
        assert read_png_scores(path).content_leak is not None  # scored against the content prompt
        assert request.content_prompt is None  # ...which is never subtracted
    with Image.open(probe / "probe.png") as plot:
        assert plot.format == "PNG"
    assert len((probe / "probe.csv").read_text().splitlines()) == len(images) + 1
    assert (probe / "probe.md").read_text().startswith("| rank | block")


def test_a_batched_probe_image_equals_the_same_request_made_alone(sdxl, probe_run):
    path = probe_run[0] / "probe" / "up_blocks.0.attentions.1-style1-prompt1.png"
    alone = sdxl(read_png_request(path)).images[0]
    assert np.abs(pixels(Image.open(path)) - pixels(alone)).max() <= 2  # float rounding of a batched call only


def test_presets_saved_by_the_probe_work_as_blocks_on_the_command_line(capsys, sdxl, tiny, probe_run, tmp_path):
    folder, out, _ = probe_run
    saved = folder / "saved" / "presets.json"
    presets = read_presets(saved)
    assert f"presets in {saved}: style={presets['style']}" in out
    assert set(presets) == {"style", "style-top2", "style-top3", "layout", "style+layout"}
    flags = ["generate", "--model", tiny.sdxl, "--adapter", tiny.sdxl_adapter, "--style", tiny.style_image,
             "--prompt", "a cat", "--steps", 2, "--width", 64, "--height", 64, "--seed", 7, "--device", "cpu"]
    code, _, err = run(capsys, *flags, "--blocks", f"@{saved}:style+layout", "-o", tmp_path / "a.png")
    assert code == 0, err
    assert read_png_request(tmp_path / "a.png").blocks == presets["style+layout"]
    direct = sdxl(Request("a cat", style=(str(tiny.style_image),), blocks=presets["style+layout"], **FAST))
    assert (pixels(Image.open(tmp_path / "a.png")) == pixels(direct.images[0])).all()


@pytest.mark.parametrize(("args", "message"), [
    (["--prompt", "a cat"], "--style is required"),
    (["--style", "{style}"], "--prompt is required"),
    (["--style", "{style}", "--prompt", " "], "--prompt is required (and not empty)"),
    (["--style", "{tmp}/missing.png", "--prompt", "a cat"], "no such file"),
    (["--style", "{style}", "--style", "{style}", "--prompt", "a", "--content-prompt", "x", "--content-prompt", "y",
      "--content-prompt", "z"], "3 content prompts for 2 styles"),
    (["--style", "{style}", "--prompt", "a", "--save-presets", "{tmp}/text.json"], "presets file"),
    (["--style", "{style}", "--prompt", "a", "--save-presets", "{tmp}/text.json/p.json"], "is a file"),
    (["--style", "{style}", "--prompt", "a", "--csd", "{tmp}/missing.pth"], "CSD checkpoint"),
    (["--style", "{style}", "--prompt", "a", "--batch-size", "0"], "0 is not in the range x>=1"),
])
def test_probe_blocks_bad_input_is_one_line_and_exit_2_before_loading(capsys, tiny, tmp_path, args, message):
    (tmp_path / "text.json").write_text("not json")
    args = [a.format(style=tiny.style_image, tmp=tmp_path) for a in args]
    code, out, err = run(capsys, *probe_flags(tiny), *args, "-o", tmp_path / "out")
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_probe_blocks_refuses_a_folder_that_is_not_empty(capsys, tiny, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.png").write_bytes(b"finished work")
    code, _, err = run(capsys, *probe_flags(tiny), "--style", tiny.style_image, "--prompt", "a", "-o", tmp_path / "out")
    assert code == 2 and "is not empty; pass --overwrite" in err
