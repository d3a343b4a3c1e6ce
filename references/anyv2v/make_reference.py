"""Run AnyV2V's own I2VGen-XL scripts on our tiny fixtures and keep what they make as test data.

    python references/anyv2v/make_reference.py /work/ext/AnyV2V [--out tests/data/anyv2v]

The checkout is TIGER-AI-Lab/AnyV2V (``git archive HEAD``); this script needs ``omegaconf`` (``pip install
omegaconf``), which the scripts import. For each case it runs, in one process each as the README says
(``run_group_ddim_inversion.py`` then ``run_group_pnp_edit.py``), the scripts' ``main(template_config,
configs_list)`` on the authors' YAML templates and a one-entry group config, after the scripts' own ``__main__``
preamble (``seed_everything(seed)``, grad off). The source clip is our tiny lossless H.264 fixture, decoded by the
product's ``read_source`` to the numbered PNG frames the scripts read first (``load_video_frames``); the edited
first frame is a fixture image.

What is patched, at run time only, and why (nothing else is touched):

- ``torchvision`` is replaced by an empty module: ``utils.py`` and ``pnp_utils.py`` import it at the top for
  helpers this path never calls (``convert_video_to_frames``), and it is not installed here (PyPI's builds pull a
  CUDA torch).
- ``I2VGenXLPipeline/DDIMScheduler/DDIMInverseScheduler.from_pretrained`` in the scripts: the hard-coded
  ``"ali-vilab/i2vgen-xl"`` becomes the tiny fixture folder, ``torch_dtype=float16, variant="fp16"`` becomes float32
  with no variant (offline, CPU, float32).
- The YAML templates: ``device`` ``cuda:N`` -> ``cpu``; ``data_dir`` -> a temporary folder holding the frames and
  the edited first frame; ``image_size``, ``n_frames``, step counts, prompts, seeds and injection fractions -> the
  case's (small) values.
- transformers 5 flattened ``CLIPTextModel`` (``text_model.final_layer_norm`` is now ``final_layer_norm``); the
  loaded text encoder gets a ``text_model`` view holding that one layer so the pipeline's ``clip_skip`` path runs.
- ``export_to_video``/``export_to_gif`` in the scripts: no-ops (they need imageio/OpenCV, absent here; the PnP script
  also saves every frame as PNG, which is what we keep).

Outputs, per case, in ``OUT/<case>.npz``: ``source`` (F x H x W x 3 uint8, the decoded clip frames handed in),
``edited`` (the edited first frame), ``timesteps`` and ``latents`` (the inverted latents the inversion script
saved, ``ddim_latents_{t}.pt``, stacked in that timestep order), ``frames`` (the PnP script's PNG frames), and
``config`` (JSON: every setting, for the tests).

Regenerated (video fixtures 3) because the source frames changed, and everything made from them: the fixture clip is
now lossless H.264 written by the product's ``write_video``, and frames are decoded with instantstyle's own colour
conversion (``files.video.frame_rgb``) instead of libswscale's, which read uninitialised row padding and gave frames
1-3 levels apart at row ends from process to process (and the old clip, written with x264's macroblock tree on,
was not the same file from build to build), so the old data matched only some test runs. Running this
script twice gives byte-identical files.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

#: The cases: AnyV2V's defaults (gradio demo and PnP template: injection 0.2 / 0.2 / 0.5, guidance 9, sampling
#: from the first inverted step), then the group config's first entry (every injection over the whole run) started
#: one step later (the PnP template's ``ddim_init_latents_t_idx: 1``) from a finer inversion.
CASES = {
    "defaults": dict(n_frames=5, inversion_steps=5, steps=5, conv=0.2, spatial=0.2, temporal=0.5, init_step=0,
                     cfg=9.0, fps=8, seed=8888, prompt="a photo of a cat in the style of a painting"),
    "full_injection": dict(n_frames=5, inversion_steps=10, steps=5, conv=1.0, spatial=1.0, temporal=1.0,
                           init_step=1, cfg=9.0, fps=8, seed=42, prompt="a dog in the house"),
}


def stub_torchvision() -> None:
    """An empty ``torchvision`` (with the submodules the scripts import names from), put in place after diffusers and
    transformers have looked for the real one (and found none)."""
    import diffusers  # noqa: F401
    import transformers  # noqa: F401
    from diffusers import DDIMInverseScheduler, DDIMScheduler, I2VGenXLPipeline  # noqa: F401
    from transformers import CLIPImageProcessor, CLIPTextModel, CLIPVisionModelWithProjection  # noqa: F401

    tv = types.ModuleType("torchvision")
    tv.transforms = types.ModuleType("torchvision.transforms")  # type: ignore[attr-defined]
    tv.io = types.ModuleType("torchvision.io")  # type: ignore[attr-defined]
    tv.io.read_video = tv.io.write_video = None  # type: ignore[attr-defined]
    sys.modules.update({"torchvision": tv, "torchvision.transforms": tv.transforms, "torchvision.io": tv.io})


def redirect_loading(module, fixture: Path) -> None:
    """The scripts' hub loads of ``ali-vilab/i2vgen-xl`` read the fixture folder, in float32."""
    import torch

    def offline(cls):
        original = cls.from_pretrained.__func__

        def from_pretrained(klass, name, *args, **kwargs):
            assert name == "ali-vilab/i2vgen-xl", name
            if kwargs.get("torch_dtype") is not None:
                kwargs["torch_dtype"] = torch.float32
            kwargs.pop("variant", None)
            loaded = original(klass, str(fixture), *args, **kwargs)
            text_encoder = getattr(loaded, "text_encoder", None)
            if text_encoder is not None and not hasattr(text_encoder, "text_model"):
                text_encoder.text_model = types.SimpleNamespace(final_layer_norm=text_encoder.final_layer_norm)
            return loaded

        return classmethod(from_pretrained)

    for name in ("I2VGenXLPipeline", "DDIMScheduler", "DDIMInverseScheduler"):
        cls = getattr(module, name, None)
        if cls is not None:  # a subclass bound in the script's namespace: the library classes stay untouched
            setattr(module, name, type(cls.__name__, (cls,), {"from_pretrained": offline(cls)}))
    module.export_to_video = module.export_to_gif = lambda *args, **kwargs: None


def decode_clip(path: Path, count: int, fps: int) -> list[np.ndarray]:
    """The first ``count`` frames of the clip as RGB arrays, read by the product's own ``read_source`` (PyAV decodes,
    ``files.video.frame_rgb`` converts the colour), so the scripts get exactly the frames ``stylize_video`` reads."""
    from instantstyle.core.video_options import VideoOptions
    from instantstyle.modes.video import read_source
    from instantstyle.testing.video import CLIP_SIZE

    width, height = CLIP_SIZE
    source = read_source(path, VideoOptions(frames=count, width=width, height=height, fps=fps))
    assert len(source.frames) == count, source.times
    return [np.asarray(frame) for frame in source.frames]


def run_script(checkout: Path, script: str, template: Path, overrides: dict, entry: dict, fixture: Path, seed: int):
    """``python <script> --template_config ... --configs_json ...`` inside this process: the script's ``__main__``
    preamble, then its ``main`` on the patched template and the one-entry group config."""
    import torch
    from omegaconf import OmegaConf

    os.chdir(checkout / "i2vgen-xl")
    module = importlib.import_module(script)
    redirect_loading(module, fixture)
    template_config = OmegaConf.load(template)
    for key, value in overrides.items():
        OmegaConf.update(template_config, key, value, merge=False)
    module.logger = logging.getLogger(script)
    module.device = torch.device(template_config.device)
    torch.set_grad_enabled(False)
    module.seed_everything(template_config.seed)
    module.main(template_config, [entry])
    return OmegaConf.merge(template_config, OmegaConf.create(entry))  # the config the script ran with


def make_case(checkout: Path, name: str, case: dict, out: Path) -> Path:
    import torch
    from PIL import Image

    from instantstyle.testing.video import tiny_video_models

    fixtures = tiny_video_models()
    work = Path(tempfile.mkdtemp(prefix=f"anyv2v-{name}-"))
    video_name = "clip"
    frames_dir = work / "demo" / video_name
    frames_dir.mkdir(parents=True)
    source = decode_clip(fixtures.clip, case["n_frames"], case["fps"])
    height, width = source[0].shape[:2]
    for i, array in enumerate(source):
        Image.fromarray(array).save(frames_dir / f"{i:05d}.png")
    edited_rel = "edited/first.png"
    (work / "edited").mkdir()
    Image.open(fixtures.edited_frame).convert("RGB").save(work / edited_rel)

    common = {"device": "cpu", "data_dir": str(work), "image_size": [width, height], "n_frames": case["n_frames"],
              "seed": case["seed"]}
    inversion = run_script(
        checkout, "run_group_ddim_inversion", checkout / "i2vgen-xl/configs/group_ddim_inversion/template.yaml",
        {**common, "inverse_config.n_steps": case["inversion_steps"], "inverse_config.target_fps": case["fps"]},
        {"active": True, "force_recompute_latents": True, "video_name": video_name,
         "recon_config": {"enable_recon": False}},
        fixtures.i2vgen, case["seed"])
    latents_dir = Path(str(inversion.inverse_config.output_dir))
    run_script(
        checkout, "run_group_pnp_edit", checkout / "i2vgen-xl/configs/group_pnp_edit/template.yaml",
        {**common, "n_steps": case["steps"], "cfg": case["cfg"], "target_fps": case["fps"],
         "ddim_init_latents_t_idx": case["init_step"], "pnp_f_t": case["conv"],
         "pnp_spatial_attn_t": case["spatial"], "pnp_temp_attn_t": case["temporal"],
         "ddim_latents_path": str(latents_dir)},
        {"active": True, "task_name": "Style-Transfer", "video_name": video_name,
         "edited_first_frame_path": edited_rel, "editing_prompt": case["prompt"], "edited_video_name": name,
         "ddim_init_latents_t_idx": case["init_step"], "pnp_f_t": case["conv"],
         "pnp_spatial_attn_t": case["spatial"], "pnp_temp_attn_t": case["temporal"]},
        fixtures.i2vgen, case["seed"])
    saved = {int(p.stem.rsplit("_", 1)[1]): p for p in latents_dir.glob("ddim_latents_*.pt")}
    timesteps = sorted(saved)
    latents = np.stack([torch.load(saved[t]).numpy() for t in timesteps])
    results = sorted((work / "Results").rglob("video_*.png"))
    assert len(results) == case["n_frames"], results
    frames = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in results])
    from omegaconf import OmegaConf

    pnp_template = OmegaConf.load(checkout / "i2vgen-xl/configs/group_pnp_edit/template.yaml")
    config = {**case, "negative_prompt": str(pnp_template.editing_negative_prompt),
              "inversion_prompt": str(pnp_template.ddim_inv_prompt), "width": width, "height": height}
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{name}.npz"
    np.savez_compressed(target, source=np.stack(source), edited=np.asarray(Image.open(work / edited_rel)),
                        timesteps=np.array(timesteps), latents=latents.astype(np.float32), frames=frames,
                        config=np.array(json.dumps(config, sort_keys=True)))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkout", type=Path, help="the extracted TIGER-AI-Lab/AnyV2V checkout")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "anyv2v")
    parser.add_argument("--case", choices=sorted(CASES), action="append", help="only these cases")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    checkout = args.checkout.resolve()
    out = args.out.resolve()
    stub_torchvision()
    sys.path.insert(0, str(checkout / "i2vgen-xl"))
    for name in args.case or sorted(CASES):
        for module in ("run_group_ddim_inversion", "run_group_pnp_edit"):  # each script fresh, as its own process
            sys.modules.pop(module, None)
        print(make_case(checkout, name, CASES[name], out))


if __name__ == "__main__":
    main()
