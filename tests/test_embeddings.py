"""Style embeddings: encoding, content subtraction by the formula, style files, and their errors."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from instantstyle import StylePipeline, UserError
from instantstyle.core.embeddings import StyleFile, encode_images, load_image, load_style, save_style

from .conftest import FAST, pixels, style_embeds

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])


def test_style_image_is_preprocessed_like_clip_224_resize_and_centre_crop(sdxl, tiny):
    """The h94 encoder folders ship no preprocessor config: CLIP's own (shortest side to 224, bicubic, centre
    crop 224, CLIP mean/std), computed here by hand on the 96x64 reference."""
    image = load_image(tiny.style_image)
    got = sdxl.resources.image_encoder.processor(images=[image], return_tensors="pt").pixel_values[0]
    factor = 224 / min(image.size)
    resized = image.resize((round(image.width * factor), round(image.height * factor)), Image.Resampling.BICUBIC)
    left, top = (resized.width - 224) // 2, (resized.height - 224) // 2
    crop = np.asarray(resized.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255
    expected = torch.tensor(((crop - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1), dtype=torch.float32)
    assert torch.allclose(got, expected, atol=1e-5)


def test_content_prompt_subtraction_equals_the_formula(sdxl, tiny):
    """image_embeds - content_scale * pooled projected text embedding of SDXL's text_encoder_2."""
    image = encode_images([load_image(tiny.style_image)], sdxl.resources.image_encoder, "global")
    _, _, pooled, _ = sdxl.pipe.encode_prompt("a rabbit", device="cpu", do_classifier_free_guidance=False)
    style, negative = style_embeds(sdxl, make_request(tiny, content_prompt="a rabbit", content_scale=0.5))
    assert torch.allclose(style, image - 0.5 * pooled, atol=1e-6)
    assert torch.equal(negative, torch.zeros_like(style))


def test_content_image_subtraction_equals_the_formula(sdxl, tiny):
    embed = lambda path: encode_images([load_image(path)], sdxl.resources.image_encoder, "global")  # noqa: E731
    style, _ = style_embeds(
        sdxl, make_request(tiny, content_image=str(tiny.content_image), content_scale=0.7)
    )
    assert torch.allclose(style, embed(tiny.style_image) - 0.7 * embed(tiny.content_image), atol=1e-6)


def test_content_subtraction_changes_the_image(sdxl, tiny):
    plain = sdxl(make_request(tiny)).images[0]
    subtracted = sdxl(make_request(tiny, content_prompt="a rabbit", content_scale=1.0)).images[0]
    assert abs(pixels(plain) - pixels(subtracted)).mean() > 0.5


def test_subtraction_applies_to_every_image_of_a_batch(sdxl, tiny):
    """Three images share one subtracted style: each differs from the others (its own noise) and from the
    same image without subtraction."""
    subtracted = sdxl(make_request(tiny, content_prompt="a rabbit", content_scale=1.0, num_images=3)).images
    plain = sdxl(make_request(tiny, num_images=3)).images
    assert len(subtracted) == 3
    assert abs(pixels(subtracted[0]) - pixels(subtracted[1])).mean() > 0.5
    assert all(abs(pixels(a) - pixels(b)).mean() > 0.5 for a, b in zip(subtracted, plain, strict=True))


def test_content_image_subtraction_batch_starts_with_the_single_image_run(sdxl, tiny):
    one = sdxl(make_request(tiny, content_image=str(tiny.content_image))).images[0]
    two = sdxl(make_request(tiny, content_image=str(tiny.content_image), num_images=2)).images
    assert len(two) == 2 and abs(pixels(one) - pixels(two[0])).max() <= 1


def test_first_of_several_images_equals_the_single_image_run(sdxl, tiny):
    one = sdxl(make_request(tiny, content_prompt="a rabbit")).images[0]
    many = sdxl(make_request(tiny, content_prompt="a rabbit", num_images=2)).images[0]
    assert abs(pixels(one) - pixels(many)).max() <= 1


def test_plus_adapter_refuses_content_subtraction(tiny):
    pipe = StylePipeline.from_pretrained(str(tiny.sdxl), str(tiny.sdxl_plus_adapter), device="cpu")
    with pytest.raises(UserError, match="plus"):
        pipe(make_request(tiny, content_prompt="a rabbit"))


def test_plus_adapter_generates(tiny):
    pipe = StylePipeline.from_pretrained(str(tiny.sdxl), str(tiny.sdxl_plus_adapter), device="cpu", blocks="all")
    with_style = pipe(make_request(tiny, blocks="all")).images[0]
    without = pipe(make_request(tiny, blocks="all", scale=0.0)).images[0]
    assert abs(pixels(with_style) - pixels(without)).mean() > 0.5


def test_vit_h_adapter_on_sdxl_needs_a_content_text_encoder(tiny):
    pipe = StylePipeline.from_pretrained(str(tiny.sdxl), str(tiny.sdxl_vith_adapter), device="cpu")
    with pytest.raises(UserError, match="--content-text-encoder"):
        pipe(make_request(tiny, content_prompt="a rabbit"))
    result = pipe(make_request(tiny, content_prompt="a rabbit", content_text_encoder=str(tiny.content_text_encoder)))
    assert result.images[0].size == (64, 64)


def test_content_text_encoder_of_another_width_is_an_error(sd15, tiny, tmp_path):
    tower = tmp_path / "bigg-text"  # SDXL's text_encoder_2 with its tokenizer: a 32-d projection; ViT-H has 24
    shutil.copytree(tiny.sdxl / "text_encoder_2", tower)
    shutil.copytree(tiny.sdxl / "tokenizer_2", tower, dirs_exist_ok=True)
    with pytest.raises(UserError, match=r"bigg-text gives 32-d embeddings; the adapter's image encoder 24$"):
        sd15(make_request(tiny, content_prompt="a rabbit", content_text_encoder=str(tower)))


@pytest.mark.parametrize("folder, message", [
    (lambda t: t.sdxl / "text_encoder_2", "no CLIP tokenizer"),  # a tower without its tokenizer
    (lambda t: t.adapters / "models" / "image_encoder", "no CLIP tokenizer"),
    (lambda t: t.root / "nowhere", "no such folder"),
])
def test_a_content_text_encoder_that_is_not_a_complete_clip_text_tower_is_refused(sd15, tiny, folder, message):
    with pytest.raises(UserError, match=message):
        sd15(make_request(tiny, content_prompt="a rabbit", content_text_encoder=str(folder(tiny))))


def test_a_content_text_encoder_without_its_projection_is_refused_not_filled_with_random_weights(sd15, tiny, tmp_path):
    tower = tmp_path / "no-projection"  # SD1.5's own text encoder (a CLIPTextModel) with a tokenizer
    shutil.copytree(tiny.sd15 / "text_encoder", tower)
    shutil.copytree(tiny.sd15 / "tokenizer", tower, dirs_exist_ok=True)
    with pytest.raises(UserError, match="not a CLIP text model with projection"):
        sd15(make_request(tiny, content_prompt="a rabbit", content_text_encoder=str(tower)))


def test_style_file_round_trip_gives_the_same_image(sdxl, tiny, tmp_path):
    style, negative = style_embeds(sdxl, make_request(tiny))
    identity = sdxl.resources.image_encoder.identity
    path = save_style(tmp_path / "s.safetensors", StyleFile(style, negative, "global", identity, {}))
    assert torch.equal(load_style(path).embeds, style)
    from_image = sdxl(make_request(tiny)).images[0]
    from_file = sdxl(make_request(tiny, style=str(path))).images[0]
    assert (pixels(from_image) == pixels(from_file)).all()


def test_a_corrupt_style_file_is_an_error(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(UserError, match="style file"):
        load_style(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("content", [b"", b"not an image"])
def test_empty_or_corrupt_image_is_an_error(tmp_path, content):
    (tmp_path / "x.png").write_bytes(content)
    with pytest.raises(UserError, match="x.png"):
        load_image(tmp_path / "x.png")


def make_request(tiny, **changes):
    from instantstyle import Request

    return Request(**{"prompt": "a cat", "style": str(tiny.style_image), **FAST, **changes})


def extreme_style_file(pipe, tiny, path, value):
    """A style file (as a hostile or broken tool might write one) whose embedding is ``value`` everywhere."""
    style, negative = style_embeds(pipe, make_request(tiny))
    extreme = torch.full_like(style, value)
    return save_style(path, StyleFile(extreme, negative, "global", pipe.resources.image_encoder.identity, {}))


def test_a_style_file_holding_inf_or_nan_is_refused_when_read(sdxl, tiny, tmp_path):
    for value in (float("inf"), float("nan")):
        path = extreme_style_file(sdxl, tiny, tmp_path / "bad.safetensors", value)
        with pytest.raises(UserError, match="not finite"):
            load_style(path)


def test_an_image_that_comes_out_nan_is_an_error_naming_the_cause_not_a_black_image(sdxl, tiny, tmp_path):
    path = extreme_style_file(sdxl, tiny, tmp_path / "huge.safetensors", 1e30)  # finite, but overflows attention
    with pytest.raises(UserError, match="NaN.*likely cause"):
        sdxl(make_request(tiny, style=str(path)))


def test_an_image_over_the_pixel_cap_is_refused_from_its_header(tmp_path):
    from instantstyle.testing.hostile import png_claiming_size

    path = png_claiming_size(tmp_path / "big.png", 7000, 7000)  # 49 MP claimed; its pixel data is not even there
    with pytest.raises(UserError, match="7000x7000 is over the limit of 40,000,000 pixels"):
        load_image(path, "style image")


def test_the_pixel_cap_is_a_parameter(tiny):
    assert load_image(tiny.style_image, max_pixels=None).size == (96, 64)
    with pytest.raises(UserError, match="over the limit of 6,143 pixels"):
        load_image(tiny.style_image, max_pixels=96 * 64 - 1)


def test_a_decompression_bomb_is_a_one_line_user_error(tmp_path):
    from instantstyle.testing.hostile import png_claiming_size

    path = png_claiming_size(tmp_path / "bomb.png", 20000, 20000)  # past PIL's own limit: it refuses to open it
    with pytest.raises(UserError, match="bomb.png: 20000x20000|bomb.png: .*decompression bomb") as caught:
        load_image(path, "style image", max_pixels=None)
    assert "\n" not in str(caught.value)
