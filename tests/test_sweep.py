"""Sweeps: every blocks x scale combination with one seed, one encoding, and a labelled contact sheet."""

import json
import shlex

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from instantstyle import Request, UserError
from instantstyle.app.cli import main
from instantstyle.app.sweep import (
    SHEET_KEY,
    Axes,
    contact_sheet,
    parse_blocks_list,
    parse_number_list,
    render_sweep,
    score_caption,
    sheet_layout,
    sweep_requests,
)
from instantstyle.core.request import read_png_request
from instantstyle.scores.pareto import cell_points, pareto_front, pick
from instantstyle.scores.scorer import read_png_scores
from instantstyle.scores.scorers import Scorers

from .conftest import FAST, pixels


def cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def model_flags(tiny) -> list[str]:
    return ["--model", tiny.sdxl, "--adapter", tiny.sdxl_adapter, "--prompt", "a cat", "--steps", "2",
            "--width", "64", "--height", "64", "--seed", "7"]


def test_blocks_list_splits_on_commas_or_on_semicolons_when_specs_have_commas():
    assert parse_blocks_list("style,style+layout,all") == ("style", "style+layout", "all")
    assert parse_blocks_list("up_blocks.0.attentions.1=1,layout=0.5;style") == (
        "up_blocks.0.attentions.1=1,layout=0.5", "style")
    assert parse_blocks_list(["style", "all"]) == ("style", "all")


@pytest.mark.parametrize("text", ["0.4,high", "0.4,,1", "-1", "nan"])
def test_bad_scale_lists_are_user_errors(text):
    with pytest.raises(UserError, match="scale"):
        parse_number_list("scale", text)


def test_requests_vary_only_blocks_scale_and_content_scale():
    base = Request("a cat", style="a.png", seed=5, num_images=3, content_prompt="a dog")
    axes = Axes(("style", "all"), (0.5, 1.0), (0.0, 0.5))
    grid = sweep_requests(base, axes)
    assert [len(row) for row in grid] == [2, 2, 2, 2]
    assert [(r.blocks, r.content_scale, r.scale) for r in grid[1]] == [("style", 0.5, 0.5), ("style", 0.5, 1.0)]
    assert {r.replace(blocks="x", scale=0, content_scale=0) for row in grid for r in row} == {
        base.replace(blocks="x", scale=0, content_scale=0, num_images=1)}


def test_too_many_cells_is_a_user_error():
    with pytest.raises(UserError, match="limit"):
        Axes(tuple(f"b{i}" for i in range(11)), tuple(range(10)))


def test_sheet_places_every_cell_enlarged_under_its_labels():
    cells = [[Image.new("RGB", (64, 64), (40 * r, 80 * c, 200)) for c in range(3)] for r in range(2)]
    rows, columns = ["style", "style+layout"], ["scale 0.4", "scale 0.7", "scale 1"]
    sheet = contact_sheet(cells, rows, columns, "tiny fixture")
    layout = sheet_layout((64, 64), rows, columns, "tiny fixture")
    assert sheet.size == layout.size and layout.factor == 3
    for r in range(2):
        for c in range(3):
            crop = np.asarray(sheet.crop(layout.cell_box(r, c)))
            assert crop.shape == (192, 192, 3) and (crop == cells[r][c].getpixel((0, 0))).all()
    inked = [sheet.crop(layout.row_label_box(r)) for r in range(2)] + [
        sheet.crop(layout.column_label_box(c)) for c in range(3)]
    assert all(np.asarray(label).min() < 100 for label in inked)  # dark text in every header


def test_sheet_labels_are_drawn_legibly_large_and_inside_their_boxes():
    """The header text as drawn on a sheet of tiny cells: capitals at least 12 px tall (an 18 px font),
    not cut by the header box."""
    cells = [[Image.new("RGB", (64, 64), "grey")]]
    sheet = contact_sheet(cells, ["STYLE"], ["SCALE 1"])
    layout = sheet_layout((64, 64), ["STYLE"], ["SCALE 1"])
    for box in (layout.column_label_box(0), layout.row_label_box(0)):
        ink = np.argwhere(np.asarray(sheet.crop(box).convert("L")) < 128)
        height = ink[:, 0].max() - ink[:, 0].min() + 1
        assert height >= 12
        assert ink[:, 0].min() > 0 and ink[:, 0].max() < box[3] - box[1] - 1  # clear of the box's edges


def test_sweep_encodes_the_style_once(sdxl, tiny, tmp_path):
    style = tmp_path / "fresh-style.png"
    Image.open(tiny.style_image).rotate(90).save(style)  # new bytes: not in the pipeline's cache yet
    calls = []
    hook = sdxl.resources.image_encoder.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        render_sweep(sdxl, Request("a cat", style=str(style), **FAST), Axes(("style", "all"), (1.0,)),
                     tmp_path / "sheet.png")
    finally:
        hook.remove()
    assert len(calls) == 1


def test_sweep_writes_sheet_and_reproducible_cells(sdxl, tiny, tmp_path):
    axes = Axes(("style",), (0.5, 1.0))
    out = render_sweep(sdxl, Request("a cat", style=str(tiny.style_image), **FAST), axes, tmp_path / "sheet.png")
    sheet, paths = out.sheet, out.paths
    assert [[p.name for p in row] for row in paths] == [["sheet-style-s0.5.png", "sheet-style-s1.png"]]
    cell = read_png_request(paths[0][0])
    assert (cell.blocks, cell.scale, cell.seed) == ("style", 0.5, 7)
    assert (pixels(Image.open(paths[0][0])) == pixels(sdxl(cell).images[0])).all()
    meta = json.loads(Image.open(sheet).info[SHEET_KEY])
    assert meta["blocks"] == ["style"] and meta["scales"] == [0.5, 1.0]
    assert pixels(Image.open(paths[0][0])).tolist() != pixels(Image.open(paths[0][1])).tolist()


def test_cli_sweep_cells_equal_single_generate_runs_and_show_the_same_progress(tiny, tmp_path):
    flags = model_flags(tiny) + ["--style", tiny.style_image]
    result = cli("sweep", *flags, "--blocks", "style,all", "--scale", "0.5", "-o", tmp_path / "sheet.png")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "sheet-style-s0.5.png").is_file() and (tmp_path / "sheet.png").is_file()
    single = cli("generate", *flags, "--blocks", "all", "--scale", "0.5", "-o", tmp_path / "single.png")
    assert single.exit_code == 0, single.output
    assert single.stderr.count("| 0/2 [") == 1 and result.stderr.count("| 0/2 [") == 2  # one step bar per image
    assert (pixels(Image.open(tmp_path / "single.png")) == pixels(Image.open(tmp_path / "sheet-all-s0.5.png"))).all()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scale", "0.5,big"], "scale 'big'"),
        (["--blocks", "style,nosuchblock"], "nosuchblock"),
        (["--content-scale", "0,0.5"], "need --content-prompt"),
        (["--blocks", "style,,all"], "empty entry"),
    ],
)
def test_cli_sweep_bad_input_is_one_line_and_exit_2(tiny, tmp_path, args, message):
    result = cli("sweep", *model_flags(tiny), "--style", tiny.style_image, *args, "-o", tmp_path / "sheet.png")
    assert result.exit_code == 2
    assert message in result.output and result.output.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_cli_sweep_refuses_to_overwrite_an_existing_cell(tiny, tmp_path):
    (tmp_path / "sheet-style-s1.png").write_bytes(b"finished work")
    result = cli("sweep", *model_flags(tiny), "--style", tiny.style_image, "--blocks", "style", "--scale", "1",
                 "-o", tmp_path / "sheet.png")
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert (tmp_path / "sheet-style-s1.png").read_bytes() == b"finished work"


def test_a_sweep_scale_past_the_request_range_is_refused():
    axes = Axes(("style",), parse_number_list("scale", "0.5,1e30"))
    with pytest.raises(UserError, match="scale must be between 0 and 10"):
        sweep_requests(Request("a cat", style="a.png", seed=5), axes)


# --- scores on the sheet, the plot, the CSV and the pick -------------------------------------------------


@pytest.fixture(scope="module")
def scored(sdxl, tiny, tmp_path_factory):
    """A scored 2 x 2 sweep with a pick, on the tiny SDXL."""
    folder = tmp_path_factory.mktemp("scored-sweep")
    base = Request("a cat", style=str(tiny.style_image), content_prompt="stripes", **FAST)
    out = render_sweep(sdxl, base, Axes(("style", "all"), (0.5, 1.0)), folder / "sheet.png",
                       scorer=Scorers(sdxl).scorer(), style_floor=0.9)
    return out


def test_every_scored_cell_carries_its_scores_in_its_png_and_the_sheet(sdxl, tiny, scored):
    meta = json.loads(Image.open(scored.sheet).info[SHEET_KEY])
    flat = [p for row in scored.paths for p in row]
    assert len(scored.cells) == len(flat) == len(meta["scores"]) == 4
    for path, cell, stored in zip(flat, scored.cells, meta["scores"], strict=True):
        expected = Scorers(sdxl).score([Image.open(path)], "a cat", str(tiny.style_image), "stripes")[0]
        assert read_png_scores(path) == cell.scores and stored == cell.scores.to_dict()
        assert cell.scores.to_dict() == pytest.approx(expected.to_dict(), abs=1e-6)
        assert cell.settings["file"] == path.name and cell.label.endswith(f"scale {cell.settings['scale']:g}")


def test_the_scored_sheet_has_a_caption_of_scores_under_every_cell(scored):
    sheet = Image.open(scored.sheet).convert("L")
    captions = [[score_caption(c.scores) for c in scored.cells[r * 2:(r + 1) * 2]] for r in range(2)]
    layout = sheet_layout((64, 64), ["style", "all"], ["scale 0.5", "scale 1"], "x",
                          [c for row in captions for c in row])
    assert captions[0][0][0].startswith("style ") and "text " in captions[0][0][0] and "leak" in captions[0][0][1]
    assert layout.caption_h > 0 and sheet.size[1] > sheet_layout((64, 64), ["style", "all"], ["s", "s"], "x").size[1]
    for r in range(2):
        for c in range(2):
            box = layout.caption_box(r, c)
            assert np.asarray(sheet.crop(box)).min() < 100  # dark caption text under each cell


def test_the_pick_is_the_pareto_pick_of_the_cells_and_is_framed(scored):
    points = cell_points(scored.cells)
    assert scored.front == pareto_front(points) and scored.picked == pick(points, 0.9)
    assert scored.picked in scored.front
    row, column = divmod(scored.picked, 2)
    assert scored.picked_request() == read_png_request(scored.paths[row][column])


def test_the_sweep_writes_a_csv_of_every_cell_and_a_plot_beside_the_sheet(scored):
    import csv

    assert scored.table == scored.sheet.with_suffix(".csv") and scored.plot.name == "sheet-plot.png"
    rows = list(csv.DictReader(scored.table.open()))
    assert [r["file"] for r in rows] == [p.name for row in scored.paths for p in row]
    assert [float(r["clip_style"]) for r in rows] == [c.scores.clip_style for c in scored.cells]
    assert [int(r["picked"]) for r in rows].index(1) == scored.picked
    with Image.open(scored.plot) as plot:
        assert plot.format == "PNG" and plot.width >= 720


def test_cli_sweep_pick_saves_a_generate_command_that_remakes_the_picked_cell(capsys, tiny, tmp_path):
    from instantstyle.app.cli import entry
    from instantstyle.core.embeddings import load_style

    flags = model_flags(tiny) + ["--style", tiny.style_image, "--blocks", "style,all", "--scale", "0.5,1",
                                 "--pick", "--device", "cpu", "-o", tmp_path / "sheet.png"]
    entry([str(f) for f in ["sweep", *flags]])
    out = capsys.readouterr().out
    script = (tmp_path / "sheet-pick.sh").read_text().splitlines()
    assert script[0] == "#!/bin/sh" and script[2] in out and "pick: " in out
    command = shlex.split(script[2])
    assert command[:2] == ["instantstyle", "generate"] and command[-2:] == ["-o", str(tmp_path / "sheet-pick.png")]
    picked = next(line for line in (tmp_path / "sheet.csv").read_text().splitlines() if line.endswith(",1,1"))
    cell = tmp_path / picked.split(",")[3]
    entry([*command[1:], "--device", "cpu"])
    assert (pixels(Image.open(tmp_path / "sheet-pick.png")) == pixels(Image.open(cell))).all()
    settings = Request.from_json(load_style(tmp_path / "sheet-pick.safetensors").metadata["request"])
    assert settings.replace(style=read_png_request(cell).style) == read_png_request(cell)


def test_cli_sweep_without_scores_writes_no_plot_csv_or_captions(tiny, tmp_path):
    flags = model_flags(tiny) + ["--style", tiny.style_image, "--blocks", "style", "--scale", "1"]
    result = cli("sweep", *flags, "--no-score", "-o", tmp_path / "sheet.png")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sheet-style-s1.png", "sheet.png"]
    assert "scores" not in json.loads(Image.open(tmp_path / "sheet.png").info[SHEET_KEY])


@pytest.mark.parametrize(("args", "message"), [
    (["--pick", "--no-score"], "--pick needs the scores; drop --no-score"),
    (["--csd", "x.pth", "--no-score"], "--csd needs the scores"),
    (["--csd", "missing.pth"], "CSD checkpoint missing.pth: no such file"),
    (["--pick", "--pick-style-floor", "1.5"], "1.5 is not in the range 0<=x<=1"),
    (["--pick", "--pick-style-floor", "nan"], "--pick-style-floor must be between 0 and 1, got nan"),
])
def test_cli_sweep_bad_score_flags_are_one_line_and_exit_2(capsys, tiny, tmp_path, args, message):
    from instantstyle.app.cli import entry

    with pytest.raises(SystemExit) as done:
        entry([str(a) for a in ["sweep", *model_flags(tiny), "--style", tiny.style_image, *args, "-o",
                                tmp_path / "sheet.png"]])
    err = capsys.readouterr().err
    assert done.value.code == 2 and message in err and err.count("\n") == 1, err
    assert not list(tmp_path.iterdir())


def test_cli_sweep_pick_without_prompt_scores_fails_before_rendering(tiny, tmp_path):
    flags = ["--model", tiny.sd15, "--adapter", tiny.sd15_adapter, "--prompt", "a cat", "--steps", "2", "--width",
             "64", "--height", "64", "--seed", "7", "--style", tiny.style_image]
    result = cli("sweep", *flags, "--pick", "-o", tmp_path / "sheet.png")
    assert result.exit_code == 2 and "--pick needs prompt scores" in result.output
    assert not list(tmp_path.iterdir())


def test_cli_sweep_refuses_to_overwrite_a_pick_file(tiny, tmp_path):
    (tmp_path / "sheet-pick.sh").write_text("mine")
    result = cli("sweep", *model_flags(tiny), "--style", tiny.style_image, "--pick", "-o", tmp_path / "sheet.png")
    assert result.exit_code == 2 and "sheet-pick.sh exists" in result.output
    assert (tmp_path / "sheet-pick.sh").read_text() == "mine"


def test_generate_command_round_trips_a_request_through_the_command_line(tiny):
    from instantstyle.app.cli import generate, generate_command, request_from_cli
    from instantstyle.core.request import AdapterUse, LoraRef, StyleRef

    request = Request("a 'quoted' cat", style=(StyleRef("a b.png", 0.3), StyleRef("c.png")), negative_prompt="dog",
                      blocks="up_blocks.0.attentions.1=0.5,layout", scale=0.7, content_prompt="x", seed=3,
                      width=512, height=768, lora=(LoraRef("l.safetensors", 0.8),), model="m", adapter="a.bin",
                      adapters=(AdapterUse("b.bin", (StyleRef("d.png", 2.0),), "layout", 0.5),))
    args = shlex.split(generate_command(request, "o.png"))[2:]
    params = generate.make_context("generate", args).params
    assert request_from_cli(params, None) == request


def test_a_sweep_row_may_be_a_presets_reference(sdxl, tiny, tmp_path, monkeypatch):
    from instantstyle.scores.preset_file import write_presets

    write_presets(tmp_path / "p.json", {"mine": "up_blocks.0.attentions.1=0.6"})
    monkeypatch.chdir(tmp_path)
    out = render_sweep(sdxl, Request("a cat", style=str(tiny.style_image), **FAST), Axes(("@p.json:mine",), (1.0,)),
                       tmp_path / "sheet.png")
    assert out.paths[0][0].name == "sheet-p.json_mine-s1.png"
    assert out.requests[0][0].blocks == "up_blocks.0.attentions.1=0.6"
    direct = sdxl(Request("a cat", style=str(tiny.style_image), blocks="up_blocks.0.attentions.1=0.6", **FAST))
    assert (pixels(Image.open(out.paths[0][0])) == pixels(direct.images[0])).all()


def test_cli_sweep_accepts_a_presets_reference_as_a_row(tiny, tmp_path):
    from instantstyle.scores.preset_file import write_presets

    write_presets(tmp_path / "p.json", {"mine": "up_blocks.0.attentions.1"})
    result = cli("sweep", *model_flags(tiny), "--style", tiny.style_image, "--blocks", f"@{tmp_path}/p.json:mine",
                 "--scale", "1", "--no-score", "-o", tmp_path / "sheet.png")
    assert result.exit_code == 0, result.output
    assert read_png_request(next(tmp_path.glob("sheet-*mine-s1.png"))).blocks == "up_blocks.0.attentions.1"
