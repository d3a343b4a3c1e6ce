"""The request: validation, JSON round trip, and the PNG text chunk."""

import pytest
from PIL import Image

from instantstyle import Request, StyleRef, UserError
from instantstyle.request import read_png_request, write_png


def test_style_weight_parses_from_a_trailing_number():
    assert StyleRef.parse("a.png:0.3") == StyleRef("a.png", 0.3)
    assert StyleRef.parse("C:/art/a.png") == StyleRef("C:/art/a.png")


def test_json_round_trip_keeps_every_field():
    request = Request("a cat", style=("a.png:0.5", "b.safetensors"), blocks="all", seed=3, content_prompt="a dog")
    assert Request.from_json(request.to_json()) == request


def test_unknown_option_is_an_error():
    with pytest.raises(UserError, match="unknown option"):
        Request.from_dict({"prompt": "x", "style": "a.png", "sclae": 1})


@pytest.mark.parametrize(
    "change",
    [{"steps": 0}, {"scale": "high"}, {"width": 100}, {"num_images": 0}, {"guidance": float("nan")}, {"seed": -1}],
)
def test_out_of_range_values_are_errors(change):
    with pytest.raises(UserError):
        Request("a cat", style="a.png", **change)


def test_a_style_is_required():
    with pytest.raises(UserError, match="style"):
        Request("a cat")


def test_content_prompt_and_content_image_exclude_each_other():
    with pytest.raises(UserError, match="not both"):
        Request("a cat", style="a.png", content_prompt="dog", content_image="c.png")


def test_png_round_trip(tmp_path):
    request = Request("a cat", style="a.png", seed=11)
    path = write_png(Image.new("RGB", (8, 8)), tmp_path / "x.png", request)
    assert read_png_request(path) == request
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left


def test_png_without_parameters_is_an_error(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    with pytest.raises(UserError, match="no instantstyle parameters"):
        read_png_request(tmp_path / "plain.png")


DEEP = "[" * 100_000 + "]" * 100_000  # a hostile JSON value: 100k levels of nesting


def test_deeply_nested_json_is_a_one_line_error():
    with pytest.raises(UserError, match="nested more than") as caught:
        Request.from_json(DEEP)
    assert "\n" not in str(caught.value)


def test_png_metadata_nested_too_deeply_is_a_one_line_error(tmp_path):
    from instantstyle.request import PNG_KEY, save_png_atomically

    path = save_png_atomically(Image.new("RGB", (8, 8)), tmp_path / "deep.png", {PNG_KEY: DEEP})
    with pytest.raises(UserError, match="nested more than"):
        read_png_request(path)
