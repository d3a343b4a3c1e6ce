"""Scores are the cosines the papers define, computed with the adapter's own encoders and preprocessing."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor, CLIPTextModelWithProjection, CLIPTokenizer, CLIPVisionModelWithProjection

from instantstyle import Request, UserError
from instantstyle.core.embeddings import load_image_encoder, load_text_tower
from instantstyle.scores.scorer import (
    PNG_SCORES_KEY,
    SCORE_KEYS,
    Scorer,
    ScoreRecord,
    Scores,
    cosine,
    format_table,
    mean_scores,
    read_png_scores,
    summarize,
)
from instantstyle.scores.scorers import Scorers
from instantstyle.testing import make_style_image

from .conftest import FAST


def hand_image_embeds(folder, images):
    """CLIP image embeddings straight from transformers, with the preprocessing diffusers uses for h94's
    encoder folders (no preprocessor config: CLIP's default at the model's 224 px)."""
    model = CLIPVisionModelWithProjection.from_pretrained(folder).eval()
    processor = CLIPImageProcessor(size=224, crop_size=224)
    with torch.no_grad():
        return model(processor(images=images, return_tensors="pt").pixel_values).image_embeds


def hand_text_embeds(folder, text, subfolder="", tokenizer_subfolder=""):
    model = CLIPTextModelWithProjection.from_pretrained(folder, subfolder=subfolder).eval()
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder=tokenizer_subfolder)
    ids = tokenizer([text], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).text_embeds


def cos(a, b) -> float:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1).item()


@pytest.fixture(scope="module")
def generated(sdxl, tiny):
    """One SDXL image made with the tiny fixture, and its request."""
    result = sdxl(Request("a cat in the house", style=(str(tiny.style_image),), **FAST))
    return result.images[0], result.request


def test_sdxl_scores_equal_the_cosines_computed_by_hand(sdxl, tiny, generated):
    image, request = generated
    scores = Scorers(sdxl).scorer().score_request([image], request, content_prompt="a dog")[0]

    encoder = tiny.adapters / "sdxl_models" / "image_encoder"
    picture = hand_image_embeds(encoder, [image])
    style = hand_image_embeds(encoder, [Image.open(tiny.style_image).convert("RGB")])
    prompt = hand_text_embeds(tiny.sdxl, request.prompt, "text_encoder_2", "tokenizer_2")
    content = hand_text_embeds(tiny.sdxl, "a dog", "text_encoder_2", "tokenizer_2")
    assert scores.clip_text == pytest.approx(cos(picture, prompt), abs=1e-5)
    assert scores.clip_style == pytest.approx(cos(picture, style), abs=1e-5)
    assert scores.content_leak == pytest.approx(cos(picture, content), abs=1e-5)
    assert scores.csd_style is None


def test_clip_style_is_the_cosine_with_the_weighted_mean_of_the_references(tiny, tmp_path):
    second = make_style_image(tmp_path / "second.png", (64, 80), seed=3)
    encoder = tiny.adapters / "sdxl_models" / "image_encoder"
    scorer = Scorer(load_image_encoder(encoder))
    scores = scorer.score([tiny.content_image], style=[f"{tiny.style_image}:1", f"{second}:3"])[0]

    refs = hand_image_embeds(encoder, [Image.open(p).convert("RGB") for p in (tiny.style_image, second)])
    mean = (1 * refs[0:1] + 3 * refs[1:2]) / 4
    picture = hand_image_embeds(encoder, [Image.open(tiny.content_image).convert("RGB")])
    assert scores.clip_style == pytest.approx(cos(picture, mean), abs=1e-5)
    assert scores.clip_text is None and scores.content_leak is None  # no text tower given


def test_an_image_scored_against_itself_as_style_gives_clip_style_1(sdxl, generated, tmp_path):
    image, request = generated
    path = tmp_path / "made.png"
    image.save(path)
    scores = Scorers(sdxl).scorer().score([path], request.prompt, style=str(path))[0]
    assert scores.clip_style == pytest.approx(1.0, abs=1e-6)


def test_a_style_file_scores_like_the_image_it_was_made_from(sdxl, tiny, generated, tmp_path):
    image, request = generated
    style_file = sdxl.save_style(request, tmp_path / "style.safetensors")
    scorer = Scorers(sdxl).scorer()
    from_image = scorer.score([image], style=str(tiny.style_image))[0]
    from_file = scorer.score([image], style=str(style_file))[0]
    assert from_file.clip_style == pytest.approx(from_image.clip_style, abs=1e-6)


def test_vit_h_adapter_scores_with_the_content_text_encoder_tower(sd15, tiny):
    scorer = Scorers(sd15).scorer(str(tiny.content_text_encoder))
    scores = scorer.score([tiny.content_image], "a photo of a house", style=str(tiny.style_image),
                          content_prompt="stripes")[0]
    picture = hand_image_embeds(tiny.adapters / "models" / "image_encoder",
                                [Image.open(tiny.content_image).convert("RGB")])
    assert scores.clip_text == pytest.approx(cos(picture, hand_text_embeds(tiny.content_text_encoder,
                                                                           "a photo of a house")), abs=1e-5)
    assert scores.content_leak == pytest.approx(cos(picture, hand_text_embeds(tiny.content_text_encoder,
                                                                              "stripes")), abs=1e-5)


def test_without_a_text_tower_in_the_encoders_space_text_scores_are_none(sd15, tiny):
    scorer = Scorers(sd15).scorer()  # SD1.5's own text encoder is not the ViT-H image encoder's CLIP
    scores = scorer.score([tiny.content_image], "a house", style=str(tiny.style_image), content_prompt="stripes")[0]
    assert scores.clip_text is None and scores.content_leak is None
    assert scores.clip_style is not None
    assert set(scorer.unavailable()) == {"clip_text", "content_leak", "csd_style"}


def test_content_leak_needs_a_content_prompt(sdxl, generated):
    image, request = generated
    assert Scorers(sdxl).scorer().score_request([image], request)[0].content_leak is None


def test_a_text_tower_of_another_clip_is_refused(tiny):
    encoder = load_image_encoder(tiny.adapters / "sdxl_models" / "image_encoder")  # 32-d projection
    tower = load_text_tower(tiny.content_text_encoder)  # the ViT-H tower: 24-d
    with pytest.raises(UserError, match="text tower"):
        Scorer(encoder, tower)


def test_scorer_from_explicit_folders_equals_the_pipelines(sdxl, tiny, generated):
    image, request = generated
    tower = load_text_tower(tiny.sdxl, "text_encoder_2", "tokenizer_2")
    explicit = Scorer(load_image_encoder(tiny.adapters / "sdxl_models" / "image_encoder"), tower)
    assert explicit.score_request([image], request) == Scorers(sdxl).scorer().score_request([image], request)


def test_score_record_is_one_json_line_that_reads_back():
    record = ScoreRecord("out/a.png", Scores(clip_text=0.25, clip_style=0.5, content_leak=None, csd_style=-0.1))
    line = record.to_json()
    assert "\n" not in line
    assert json.loads(line) == {"image": "out/a.png", "clip_text": 0.25, "clip_style": 0.5, "content_leak": None,
                                "csd_style": -0.1}
    assert ScoreRecord.from_json(line) == record


def test_score_table_has_a_column_per_score_and_a_dash_where_missing():
    table = format_table([ScoreRecord("a.png", Scores(0.1234, 0.9, None, None))])
    header, row = table.splitlines()
    assert header.split() == ["image", *SCORE_KEYS]
    assert row.split() == ["a.png", "0.123", "0.900", "-", "-"]


@pytest.mark.parametrize("data", [{"clip_text": 1.5}, {"clip_style": "high"}, {"clip_text": True}, {"style": 0.1}])
def test_scores_out_of_range_or_unknown_are_refused(data):
    with pytest.raises(UserError):
        Scores.from_dict(data)


def test_summary_is_the_mean_and_sample_spread_of_the_known_values():
    scores = [Scores(clip_text=0.1, clip_style=0.5), Scores(clip_text=0.3), Scores(clip_text=0.2)]
    summary = summarize(scores)
    assert summary["clip_text"].mean == pytest.approx(0.2)
    assert summary["clip_text"].std == pytest.approx(0.1)
    assert summary["clip_text"].n == 3
    assert (summary["clip_style"].mean, summary["clip_style"].std, summary["clip_style"].n) == (0.5, 0.0, 1)
    assert summary["csd_style"] is None
    mean = mean_scores(scores)
    assert (mean.clip_text, mean.clip_style, mean.csd_style) == (pytest.approx(0.2), 0.5, None)


def test_cosine_is_clamped_to_its_range_and_none_when_not_a_number():
    a = torch.tensor([[0.3, -1.2, 2.0]])
    assert cosine(a, a * 7) == 1.0  # within [-1, 1] despite float rounding
    assert cosine(a, -a) == -1.0
    assert cosine(a, torch.tensor([[float("nan"), 0.0, 1.0]])) is None


@pytest.mark.parametrize("where, message", [
    (lambda t: (t.adapters / "sdxl_models" / "image_encoder", None), "no CLIP tokenizer"),
    (lambda t: (t.sdxl, "text_encoder"), "not a CLIP text model with projection"),  # no projection: would be random
    (lambda t: (t.sdxl, None), "no config.json"),
])
def test_a_folder_that_is_not_a_clip_text_tower_is_refused(tiny, where, message):
    folder, sub = where(tiny)
    with pytest.raises(UserError, match=message):
        load_text_tower(folder, sub, "tokenizer" if sub else None)


def test_a_score_record_nested_absurdly_deep_is_a_one_line_error():
    with pytest.raises(UserError, match="nested more than"):
        ScoreRecord.from_json('{"image": "a.png", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")


def test_pipeline_score_of_a_result_scores_it_against_its_own_request(sdxl, tiny):
    """Against the request's prompt, style and content prompt: the cosines computed by hand from them."""
    result = sdxl(Request("a cat in the house", style=(str(tiny.style_image),), content_prompt="stripes", **FAST))
    scores = Scorers(sdxl).score(result)[0]

    encoder = tiny.adapters / "sdxl_models" / "image_encoder"
    picture = hand_image_embeds(encoder, [result.images[0]])
    style = hand_image_embeds(encoder, [Image.open(tiny.style_image).convert("RGB")])
    prompt = hand_text_embeds(tiny.sdxl, "a cat in the house", "text_encoder_2", "tokenizer_2")
    content = hand_text_embeds(tiny.sdxl, "stripes", "text_encoder_2", "tokenizer_2")
    assert scores.clip_text == pytest.approx(cos(picture, prompt), abs=1e-5)
    assert scores.clip_style == pytest.approx(cos(picture, style), abs=1e-5)
    assert scores.content_leak == pytest.approx(cos(picture, content), abs=1e-5)


def test_pipeline_score_loads_a_csd_file_once_and_adds_csd_style(sdxl, tiny, tmp_path):
    from instantstyle.testing.csd import build_csd_checkpoint

    checkpoint = build_csd_checkpoint(tmp_path / "csd.safetensors", "safetensors")
    scores = Scorers(sdxl).score([tiny.content_image], "a house", style=str(tiny.style_image), csd=checkpoint)[0]
    assert scores.csd_style is not None and scores.clip_text is not None
    scorers = Scorers(sdxl)
    assert scorers.scorer(csd=checkpoint) is scorers.scorer(csd=checkpoint)


def test_an_absurd_prompt_to_score_against_is_one_line_before_tokenizing(sdxl, tiny):
    with pytest.raises(UserError, match=r"^content prompt is 10,001 characters; the most is 10,000"):
        Scorers(sdxl).scorer().score([str(tiny.content_image)], "a cat", content_prompt="x" * 10_001)


def test_scores_stored_in_a_hostile_png_are_one_line(tmp_path):
    """Stored scores are read like the request beside them: a text chunk that inflates past PIL's limit, a bomb."""
    from instantstyle.testing.hostile import png_claiming_size, png_with_huge_text

    with pytest.raises(UserError, match="huge.png: a text chunk is too large to read"):
        read_png_scores(png_with_huge_text(tmp_path / "huge.png", PNG_SCORES_KEY))
    with pytest.raises(UserError, match="bomb.png: refused as a possible decompression bomb"):
        read_png_scores(png_claiming_size(tmp_path / "bomb.png", 20000, 20000))
