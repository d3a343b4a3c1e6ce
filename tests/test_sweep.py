"""Sweeps: every blocks x scale combination with one seed, one encoding, and a labelled contact sheet."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from instantstyle import Request, UserError
from instantstyle.cli import main
from instantstyle.request import read_png_request
from instantstyle.sweep import (
    SHEET_KEY,
    Axes,
    contact_sheet,
    parse_blocks_list,
    parse_number_list,
    render_sweep,
    sheet_layout,
    sweep_requests,
)

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
    hook = sdxl.image_encoder.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        render_sweep(sdxl, Request("a cat", style=str(style), **FAST), Axes(("style", "all"), (1.0,)),
                     tmp_path / "sheet.png")
    finally:
        hook.remove()
    assert len(calls) == 1


def test_sweep_writes_sheet_and_reproducible_cells(sdxl, tiny, tmp_path):
    axes = Axes(("style",), (0.5, 1.0))
    sheet, paths = render_sweep(sdxl, Request("a cat", style=str(tiny.style_image), **FAST), axes,
                                tmp_path / "sheet.png")
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
    assert len(list(tmp_path.glob("sheet-*.png"))) == 2 and (tmp_path / "sheet.png").is_file()
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
