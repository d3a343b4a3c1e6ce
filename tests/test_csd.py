"""CSD loads from the authors' checkpoint layout without running pickled code, and embeds as their code does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from instantstyle import Request, UserError
from instantstyle.scores.csd import CSD_MEAN, CSD_STD, load_csd, preprocess, style_embeds
from instantstyle.scores.scorer import Scorer
from instantstyle.scores.scorers import Scorers
from instantstyle.testing import make_style_image
from instantstyle.testing.csd import build_csd_checkpoint, csd_state_dict


def authors_forward(state: dict[str, torch.Tensor], pixels: torch.Tensor) -> torch.Tensor:
    """CSD_CLIP.forward's style output on the raw checkpoint tensors, as OpenAI CLIP's VisionTransformer
    computes it (conv patches, class token, ln_pre, pre-LN blocks with nn.MultiheadAttention and QuickGELU,
    ln_post of the class token) followed by ``@ last_layer_style`` and L2 normalisation."""
    width, _, patch, _ = state["backbone.conv1.weight"].shape
    heads = width // 64

    def ln(x, name):
        return F.layer_norm(x, (width,), state[f"{name}.weight"], state[f"{name}.bias"])

    x = F.conv2d(pixels, state["backbone.conv1.weight"], stride=patch)
    x = x.reshape(x.shape[0], width, -1).permute(0, 2, 1)
    cls = state["backbone.class_embedding"] + torch.zeros(x.shape[0], 1, width)
    x = ln(torch.cat([cls, x], dim=1) + state["backbone.positional_embedding"], "backbone.ln_pre")
    x = x.permute(1, 0, 2)
    blocks = sorted({int(k.split(".")[3]) for k in state if k.startswith("backbone.transformer.resblocks.")})
    for i in blocks:
        p = f"backbone.transformer.resblocks.{i}"
        attn = torch.nn.MultiheadAttention(width, heads)
        attn.load_state_dict({"in_proj_weight": state[f"{p}.attn.in_proj_weight"],
                              "in_proj_bias": state[f"{p}.attn.in_proj_bias"],
                              "out_proj.weight": state[f"{p}.attn.out_proj.weight"],
                              "out_proj.bias": state[f"{p}.attn.out_proj.bias"]})
        h = ln(x, f"{p}.ln_1")
        x = x + attn(h, h, h, need_weights=False)[0]
        h = F.linear(ln(x, f"{p}.ln_2"), state[f"{p}.mlp.c_fc.weight"], state[f"{p}.mlp.c_fc.bias"])
        x = x + F.linear(h * torch.sigmoid(1.702 * h), state[f"{p}.mlp.c_proj.weight"], state[f"{p}.mlp.c_proj.bias"])
    feature = ln(x.permute(1, 0, 2)[:, 0, :], "backbone.ln_post")
    return F.normalize(feature @ state["last_layer_style"], dim=1, p=2)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("csd-images")
    return [Image.open(make_style_image(folder / f"s{i}.png", size, seed=i)).convert("RGB")
            for i, size in enumerate([(96, 64), (64, 64), (50, 90)])]


@pytest.mark.parametrize("fmt", ["training", "state_dict", "safetensors"])
def test_csd_embeds_as_the_authors_forward_on_the_raw_checkpoint(tmp_path, pictures, fmt):
    path = build_csd_checkpoint(tmp_path / ("csd.safetensors" if fmt == "safetensors" else "checkpoint.pth"), fmt)
    model = load_csd(path)
    with torch.no_grad():
        expected = authors_forward(csd_state_dict(), preprocess(pictures))
    got = style_embeds(pictures, model)
    assert got.shape == (3, 48)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(got.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_csd_preprocessing_is_clip_normalised_pixels_at_224(tmp_path):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8))
    pixels = preprocess([image])
    expected = (torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
                - torch.tensor(CSD_MEAN)[:, None, None]) / torch.tensor(CSD_STD)[:, None, None]
    assert torch.allclose(pixels[0], expected, atol=1e-6)


def test_csd_preprocessing_resizes_the_short_side_and_crops_the_centre_as_torchvision():
    # 300x200 -> 336x224 (long side truncated), crop offset round(112 / 2) = 56 on x
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (200, 300, 3), dtype=np.uint8))
    resized = image.resize((336, 224), Image.Resampling.BICUBIC).crop((56, 0, 280, 224))
    expected = preprocess([resized])  # already 224: passes unchanged
    assert torch.allclose(preprocess([image]), expected, atol=1e-6)


def test_csd_refuses_a_pickle_that_would_run_code(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').close()",))

    path = tmp_path / "checkpoint.pth"
    torch.save({"model_state_dict": csd_state_dict(), "args": Payload()}, path)
    with pytest.raises(UserError, match="refused, its pickle calls exec") as err:
        load_csd(path)
    assert "\n" not in str(err.value)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the file really is malicious: an unsafe load runs it
    assert marker.exists()


@pytest.mark.parametrize("make, message", [
    (lambda p: p, "no such file"),
    (lambda p: (p.write_bytes(b"not a checkpoint"), p)[1], "not a torch checkpoint"),
    (lambda p: (torch.save({"weight": torch.zeros(2)}, p), p)[1], "not a CSD"),
    (lambda p: (torch.save([1, 2], p), p)[1], "no state dict"),
])
def test_csd_bad_files_are_one_line_errors(tmp_path, make, message):
    with pytest.raises(UserError, match=message) as err:
        load_csd(make(tmp_path / "csd.pth"))
    assert "\n" not in str(err.value)


def test_csd_refuses_an_ip_adapter_file(tiny):
    with pytest.raises(UserError, match="not a CSD"):
        load_csd(tiny.sdxl_adapter)


def test_csd_loads_from_a_folder_holding_the_model_file(tmp_path, pictures):
    build_csd_checkpoint(tmp_path / "CSD-ViT-L" / "model.safetensors", "safetensors")
    assert style_embeds(pictures[:1], load_csd(tmp_path / "CSD-ViT-L")).shape == (1, 48)


def test_csd_style_score_is_the_cosine_of_csd_embeddings(sdxl, tiny, tmp_path, pictures):
    model = load_csd(build_csd_checkpoint(tmp_path / "csd.safetensors", "safetensors"))
    second = make_style_image(tmp_path / "b.png", (70, 70), seed=9)
    scores = Scorers(sdxl).scorer(csd=model).score([pictures[2]], style=[str(tiny.style_image), f"{second}:2"])[0]
    state = csd_state_dict()
    with torch.no_grad():
        refs = authors_forward(state, preprocess([Image.open(p).convert("RGB") for p in (tiny.style_image, second)]))
        image = authors_forward(state, preprocess(pictures[2:]))
    mean = (refs[0:1] + 2 * refs[1:2]) / 3
    assert scores.csd_style == pytest.approx(F.cosine_similarity(image, mean).item(), abs=1e-5)


def test_csd_style_is_none_for_style_file_references(sdxl, tiny, tmp_path):
    model = load_csd(build_csd_checkpoint(tmp_path / "csd.safetensors", "safetensors"))
    style_file = sdxl.save_style(Request("x", style=(str(tiny.style_image),)), tmp_path / "s.safetensors")
    scorer = Scorer(sdxl.resources.image_encoder, csd=model, device=sdxl.resources.device)
    scores = scorer.score([tiny.content_image], style=str(style_file))[0]
    assert scores.csd_style is None and scores.clip_style is not None
