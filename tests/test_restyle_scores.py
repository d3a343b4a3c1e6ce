"""How much of a restyled photo an image keeps: content_keep (CLIP) and csd_content_keep (CSD's content head, what
InstantStyle-Plus prints), beside the style scores, in tables, sweeps and the pick."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch.nn.functional as F
from PIL import Image

from instantstyle import UserError
from instantstyle.core.embeddings import encode_reference
from instantstyle.scores.csd import load_csd
from instantstyle.scores.pareto import Cell, cells_csv, pick
from instantstyle.scores.scorer import Scorer, Scores, format_table
from instantstyle.scores.scorer import ScoreRecord as Record
from instantstyle.testing.restyle import tiny_restyle_models

DATA = Path(__file__).parent / "data" / "restyle"


@pytest.fixture(scope="session")
def rs(tiny, tmp_path_factory):
    return tiny_restyle_models(tmp_path_factory.mktemp("restyle"), tiny)


def test_csd_scores_of_the_authors_image_are_the_similarities_their_script_prints(sdxl, rs):
    expected = np.load(DATA / "default.npz")
    scorer = Scorer(sdxl.resources.image_encoder, csd=load_csd(rs.csd), device=sdxl.resources.device)
    image = Image.fromarray(expected["image"])
    scores = scorer.score([image], style=[str(rs.style)], photo=str(rs.photo))[0]
    assert scores.csd_content_keep == pytest.approx(float(expected["content_sim"]), abs=1e-5)
    assert scores.csd_style == pytest.approx(float(expected["style_sim"]), abs=1e-5)


def test_content_keep_is_the_clip_cosine_of_the_image_and_the_photo(sdxl, rs):
    image = Image.fromarray(np.load(DATA / "default.npz")["image"])
    res = sdxl.resources
    scores = Scorer(res.image_encoder, device=res.device).score([image], photo=str(rs.photo))[0]
    photo = encode_reference(Image.open(rs.photo).convert("RGB"), sdxl.resources.image_encoder, "global")
    mine = encode_reference(image, sdxl.resources.image_encoder, "global")
    assert scores.content_keep == pytest.approx(F.cosine_similarity(mine, photo).item(), abs=1e-6)
    assert scores.csd_content_keep is None  # no CSD given


def test_keep_columns_appear_only_where_a_photo_was_restyled():
    plain, kept = Scores(clip_style=0.5), Scores(clip_style=0.5, content_keep=0.8)
    assert "content_keep" not in format_table([Record("a.png", plain)])
    assert "content_keep" in format_table([Record("a.png", plain), Record("b.png", kept)])
    assert "content_keep" not in plain.to_dict() and kept.to_dict()["content_keep"] == 0.8
    assert Scores.from_dict(kept.to_dict()) == kept
    assert "content_keep" in cells_csv([Cell({"scale": 1}, kept)]).splitlines()[0]


def test_the_pick_keeps_to_the_content_floor():
    points = [(0.9, 0.2), (0.8, 0.3), (0.7, 0.4)]  # (style, prompt)
    kept = [0.9, 0.8, 0.3]
    assert pick(points, 0.0) == 2  # the best prompt, whatever the photo
    assert pick(points, 0.0, kept, content_floor=0.85) == 1  # the third keeps too little of the photo
    with pytest.raises(UserError, match="needs content-kept scores"):
        pick(points, 0.0, [None, None, None], content_floor=0.5)
