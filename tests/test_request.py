"""The request: validation, JSON round trip, and the PNG text chunk."""

import pytest
from PIL import Image

from instantstyle import Request, StyleRef, UserError
from instantstyle.core.request import read_png_request, write_png


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
    from instantstyle.core.request import PNG_KEY
    from instantstyle.files.atomic import save_png_atomically

    path = save_png_atomically(Image.new("RGB", (8, 8)), tmp_path / "deep.png", {PNG_KEY: DEEP})
    with pytest.raises(UserError, match="nested more than"):
        read_png_request(path)


ADAPTER = "extra.safetensors;style=b.png"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"scale": 1e30}, "scale must be between 0 and 10"),
        ({"scale": 10.5}, "scale must be between 0 and 10"),
        ({"content_scale": 1e30}, "content scale must be between 0 and 10"),
        ({"guidance": 1e30}, "guidance must be between 0 and 50"),
        ({"guidance": 75.0}, "guidance must be between 0 and 50"),
        ({"style": ("a.png:1e30",)}, "style weight must be between 0 and 10"),
        ({"style": ("a.png:1e308", "b.png:1e308")}, "style weight must be between 0 and 10"),  # sum: inf
        ({"style": ("a.png:0", "b.png:0")}, "style weights must not all be 0"),
        ({"composition": "c.png", "composition_scale": 1e30}, "composition scale must be between 0 and 10"),
        ({"control": "canny", "control_image": "c.png", "control_scale": 1e30}, "control scale must be between 0"),
        ({"adapters": (ADAPTER + ";scale=1e30",)}, "adapter scale must be between 0 and 10"),
        ({"adapters": (ADAPTER + ":1e30",)}, "style weight must be between 0 and 10"),
        ({"adapters": (ADAPTER + ":0",)}, "style weights must not all be 0"),
        ({"lora": ("l.safetensors:1e30",)}, "LoRA scale must be between -10 and 10"),
        ({"lora": ("l.safetensors:-11",)}, "LoRA scale must be between -10 and 10"),
    ],
)
def test_numbers_past_any_useful_range_are_refused(change, message):
    with pytest.raises(UserError, match=message):
        Request("a cat", **{"style": "a.png", **change})


def test_the_edges_of_every_range_are_accepted():
    request = Request("a cat", style=("a.png:10", "b.png:0"), scale=10, content_scale=10, guidance=50,
                      lora=("l.safetensors:-10",), adapters=(ADAPTER + ";scale=10",))
    assert (request.scale, request.guidance, request.lora[0].scale) == (10, 50, -10)


def test_an_absurdly_long_prompt_is_refused_before_anything_runs():
    with pytest.raises(UserError, match="prompt is 10,000,000 characters; the most is 10,000"):
        Request("x" * 10_000_000, style="a.png")
    with pytest.raises(UserError, match="negative prompt is"):
        Request("a cat", style="a.png", negative_prompt="x" * 10_001)


def test_png_metadata_that_inflates_past_pils_limit_is_a_user_error(tmp_path):
    from instantstyle.core.request import PNG_KEY
    from instantstyle.testing.hostile import png_with_huge_text

    with pytest.raises(UserError, match="huge.png: .*text"):
        read_png_request(png_with_huge_text(tmp_path / "huge.png", PNG_KEY))


def test_from_a_decompression_bomb_is_a_user_error(tmp_path):
    from instantstyle.testing.hostile import png_claiming_size

    with pytest.raises(UserError, match="bomb.png"):
        read_png_request(png_claiming_size(tmp_path / "bomb.png", 20000, 20000))
