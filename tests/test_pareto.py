"""The Pareto front and the style-floor pick on made-up score tables, and the plot that shows them."""

from __future__ import annotations

import pytest
from PIL import Image

from instantstyle import UserError
from instantstyle.scores.pareto import Cell, cell_points, cells_csv, pareto_front, pick, style_key, style_threshold
from instantstyle.scores.plots import COLORS, nice_ticks, save_plot, scatter_plot
from instantstyle.scores.scorer import Scores

#: A made-up sweep: (blocks, scale) -> (csd_style, clip_text).
TABLE = {
    ("style", 0.4): (0.55, 0.200),
    ("style", 0.7): (0.62, 0.180),
    ("style", 1.0): (0.70, 0.120),
    ("all", 0.4): (0.50, 0.150),  # dominated by (style, 0.4)
    ("style+layout", 0.7): (0.66, 0.160),
    ("all", 0.0): (0.40, 0.220),  # the plain model: best prompt, least style
    ("all", 1.0): (0.71, 0.050),  # most style, prompt lost
}


def cells(table=TABLE, csd=True) -> list[Cell]:
    return [Cell({"blocks": b, "scale": s}, Scores(clip_text=t, clip_style=st * 0.9, csd_style=st if csd else None),
                 f"{b} s={s}") for (b, s), (st, t) in table.items()]


def test_front_is_exactly_the_settings_no_other_beats_on_both():
    points = cell_points(cells())
    front = pareto_front(points)
    settings = [cells()[i].settings for i in front]
    assert {"blocks": "all", "scale": 0.4} not in settings
    assert len(front) == len(TABLE) - 1
    assert [points[i][0] for i in front] == sorted((points[i][0] for i in front), reverse=True)  # by style


def test_pick_maximises_prompt_while_style_stays_within_the_floor():
    # best style 0.71; floor 0.9 -> at least 0.639: (style, 1.0), (style+layout, 0.7), (all, 1.0) qualify,
    # and of those style+layout at 0.7 keeps the most prompt (0.16)
    table = cells()
    assert table[pick(cell_points(table), 0.9)].settings == {"blocks": "style+layout", "scale": 0.7}


def test_pick_floor_1_is_the_strongest_style_and_floor_0_the_best_prompt():
    points = cell_points(cells())
    assert cells()[pick(points, 1.0)].settings == {"blocks": "all", "scale": 1.0}
    assert cells()[pick(points, 0.0)].settings == {"blocks": "all", "scale": 0.0}


def test_the_pick_is_always_on_the_front():
    points = cell_points(cells())
    front = pareto_front(points)
    assert all(pick(points, floor / 20) in front for floor in range(21))


def test_pick_skips_cells_without_scores_and_handles_negative_styles():
    points = [(-0.30, 0.1), None, (-0.20, 0.05), (-0.25, 0.2)]
    assert style_threshold(-0.20, 0.5) == pytest.approx(-0.30)
    assert pick(points, 0.5) == 3  # style -0.25 is within the floor of -0.30; its prompt 0.2 is the best
    assert pick(points, 1.0) == 2


def test_style_score_is_csd_when_every_cell_has_it_else_clip_style():
    assert style_key(cells()) == "csd_style"
    mixed = cells()[:2] + cells(csd=False)[2:]
    assert style_key(mixed) == "clip_style"
    assert cell_points(mixed)[0] == (pytest.approx(0.55 * 0.9), 0.2)


@pytest.mark.parametrize("floor", [-0.1, 1.5, "0.9", True])
def test_pick_refuses_a_floor_outside_0_to_1(floor):
    with pytest.raises(UserError, match="style floor"):
        pick([(0.5, 0.5)], floor)


def test_pick_with_no_scored_cell_is_a_user_error():
    with pytest.raises(UserError, match="no setting"):
        pick([None, None])


def test_nice_ticks_are_round_and_cover_the_range():
    assert nice_ticks(0.37, 0.74) == [0.4, 0.5, 0.6, 0.7]
    assert nice_ticks(-0.013, 0.021) == [-0.01, 0.0, 0.01, 0.02]


def test_scatter_plot_is_a_png_with_the_front_and_the_pick_drawn(tmp_path):
    table = cells()
    points = cell_points(table)
    chosen = pick(points)
    image = scatter_plot(points, [c.label for c in table], "CSD style", "CLIP text", front=pareto_front(points),
                         picked=chosen, threshold=(style_threshold(0.71, 0.9), "style floor 0.9"), title="sweep")
    path = save_plot(image, tmp_path / "plot.png")
    with Image.open(path) as read:
        assert read.format == "PNG"
        assert read.width > 700 and read.height >= 500
        colors = {c for _, c in read.convert("RGB").getcolors(1 << 20)}
    assert COLORS["front"] in colors and COLORS["pick"] in colors and COLORS["point"] in colors


def test_scatter_plot_lists_unscored_points_and_needs_a_label_each():
    image = scatter_plot([None, (0.1, 0.2)], ["broken", "fine"], "x", "y")
    assert image.mode == "RGB"
    with pytest.raises(ValueError):
        scatter_plot([(0.1, 0.2)], [], "x", "y")


def test_cells_csv_has_every_setting_and_score_and_marks_front_and_pick():
    import csv
    import io

    table = cells()
    points = cell_points(table)
    rows = list(csv.DictReader(io.StringIO(cells_csv(table, pareto_front(points), pick(points)))))
    assert len(rows) == len(TABLE)
    assert list(rows[0])[:3] == ["label", "blocks", "scale"]
    assert [r["blocks"] for r in rows if r["picked"] == "1"] == ["style+layout"]
    assert sum(r["on_front"] == "1" for r in rows) == len(TABLE) - 1
    assert float(rows[0]["csd_style"]) == 0.55 and rows[0]["content_leak"] == ""
