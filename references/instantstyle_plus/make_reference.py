#!/usr/bin/env python
"""Run the authors' InstantStyle-Plus (``infer_style.py`` at commit 2beaef4) on our tiny fixtures and keep what it
makes as test data: the inverted latent, the image, and the CSD similarities it prints, one ``.npz`` per case.

    python references/instantstyle_plus/make_reference.py /work/ext/InstantStyle-Plus /work/ext/CSD-Score \\
        [--fixtures DIR] [--out tests/data/restyle]

The first argument is the extracted checkout of instantX-research/InstantStyle-Plus at 2beaef4; the second that of
haofanwang/CSD-Score (the ``CSD_Score`` package the script imports, cloned beside it as its README says). This is
not shipped and not run by the tests; it needs what the authors' code imports and the project does not:
``torchvision`` (here PyPI's 0.28.0 wheel, ``--no-deps``), ``clip-anytorch`` (OpenAI's ``clip``), ``pyrallis``,
``typing_inspect``, ``ftfy``, ``regex`` and ``opencv-python-headless``, in a venv that also sees the project's own.

What runs is the authors' code: ``infer_style.py`` itself (executed as a script), its ``inversion.run`` with the
ReNoise inversion pipeline and DDIM scheduler from ``src/``, its ``StableDiffusionXLControlNetImg2ImgPipeline``
(with the CSD style/content guidance) and CSD-Score's ``CSD_CLIP``. Patched at run time, each for the reason given,
and nothing else:

1. torchvision's native ops are not registered: the only wheel here is a CUDA build whose ``_C`` cannot load beside
   the CPU torch, and registering fake kernels for its ops then fails at import. The transforms the script uses
   (``Resize``, ``CenterCrop``, ``ToTensor``, ``Normalize``) are pure Python and run unchanged.
2. ``diffusers.pipelines.controlnet.multicontrolnet`` is aliased to where diffusers 0.42 keeps
   ``MultiControlNetModel`` (``diffusers.models.controlnets.multicontrolnet``); the pipeline file imports the old path.
3. In ``infer_style.py``'s text, exact substitutions (each must match once): the model, ControlNet, IP-Adapter and
   CSD paths become our fixtures (offline: nothing can be downloaded), ``torch.float16`` becomes ``torch.float32``
   and ``variant="fp16"`` goes (CPU float32; the fixtures have no fp16 variant), and the case's values replace the
   script's constants: photo, style and prompt, the 1024 px size, 50 steps (inversion and denoising), 1 renoise
   step, seed 7865, the global (content) scale 0.3, the control scale 0.6 and the two guidance scales 0.0. The last
   line (saving a JPEG named by the scores) is dropped; the scores are kept from the script's variables.
4. ``src.utils.enums_utils.is_float16`` says False: the inversion pipelines load in float32 (same reason as 3).
5. ``CSD_CLIP`` loads OpenAI's ViT-L/14 from ``models/ViT-L-14.pt`` before reading the CSD checkpoint over it; the
   script runs in a folder where that file is a tiny OpenAI CLIP state dict (``clip.model.CLIP``, random) whose
   visual tower has the shapes of our CSD fixture, so the checkpoint then sets every weight CSD uses, as with the
   real file.

The photo is written at each case's output size and the style image is 512 x 512, so the script's own resizes
(``resize((1024, 1024))`` of the photo, of the canny map, ``resize((512, 512))`` of the style) change nothing and
our code, which takes the photo at the output size, sees the same pixels.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import types
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

#: One entry per case: what differs from ``default`` (``photo``: which fixture photo; the rest are Request fields).
CASES: dict[str, dict[str, object]] = {
    "default": {},
    "content-scale-0": {"restyle_content_scale": 0.0},
    "control-scale-0.9": {"control_scale": 0.9},
    "wide-seed-11": {"photo": "photo_wide", "seed": 11},
    "renoise-2": {"renoise_steps": 2},
    "inversion-5-steps-3": {"inversion_steps": 5},
    "style-guidance": {"style_guidance": 300.0},
    "content-guidance": {"content_guidance": 300.0},
}
#: The request every case starts from (the recipe's values, tiny size and steps).
DEFAULT = {"photo": "photo", "prompt": "a photo of a house", "steps": 3, "inversion_steps": None, "renoise_steps": 1,
           "seed": 7865, "restyle_content_scale": 0.3, "control_scale": 0.6, "style_guidance": 0.0,
           "content_guidance": 0.0}


def build_fixtures(root: Path) -> dict[str, Path]:
    """Our tiny fixtures, built by the project's own builders (the same trees the tests build)."""
    from instantstyle.testing import tiny_models
    from instantstyle.testing.restyle import tiny_restyle_models

    tiny = tiny_models(root / "tiny")
    restyle = tiny_restyle_models(root / "restyle", tiny)
    return {"sdxl": tiny.sdxl, "adapters": tiny.adapters, "controlnet": restyle.controlnet,
            "photo": restyle.photo, "photo_wide": restyle.photo_wide, "style": restyle.style, "csd": restyle.csd}


def patch_imports() -> None:
    """Patches 1 and 2."""
    for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
        sys.modules[name] = types.ModuleType(name)
    import diffusers.models.controlnets.multicontrolnet as moved

    sys.modules["diffusers.pipelines.controlnet.multicontrolnet"] = moved


def substitute(text: str, pairs: list[tuple[str, str]]) -> str:
    """Patch 3: each ``old`` must occur exactly once in the script."""
    for old, new in pairs:
        count = text.count(old)
        if count != 1:
            raise SystemExit(f"infer_style.py: {old!r} occurs {count} times, expected once (another commit?)")
        text = text.replace(old, new)
    return text


def script_for(source: str, case: dict[str, object], paths: dict[str, Path]) -> str:
    """``infer_style.py`` with the fixture paths, float32 and the case's values."""
    from PIL import Image

    photo = paths[str(case["photo"])]
    width, height = Image.open(photo).size
    steps = int(case["steps"])  # type: ignore[call-overload]
    inversion = case["inversion_steps"] or steps
    text = substitute(source, [
        ('"./data/style/103.jpg"', repr(str(paths["style"]))),
        ('"./data/content/11.jpg"', repr(str(photo))),
        ('content_image_prompt = "paris"', f"content_image_prompt = {case['prompt']!r}"),
        ('.convert("RGB").resize((1024, 1024))', f'.convert("RGB").resize(({width}, {height}))'),
        ('model_path = "CSD_Score/models/checkpoint.pth"', f"model_path = {str(paths['csd'])!r}"),
        ('model_name="./checkpoints/sdxlUnstableDiffusers_v8HeavensWrathVAE")', f"model_name={str(paths['sdxl'])!r})"),
        ("num_inference_steps = 50,", f"num_inference_steps = {steps},"),
        ("num_inversion_steps = 50,", f"num_inversion_steps = {inversion},"),
        ("num_renoise_steps = 1,", f"num_renoise_steps = {case['renoise_steps']},"),
        ("seed = 7865", f"seed = {case['seed']}"),
        ("Image.fromarray(input_image_cv2).resize((1024, 1024))", f"Image.fromarray(input_image_cv2).resize(({width}, "
                                                                  f"{height}))"),
        ('controlnet_path = "./checkpoints/MistoLine"', f"controlnet_path = {str(paths['controlnet'])!r}"),
        ('    torch_dtype=torch.float16,\n    variant="fp16",\n).to(device)',
         "    torch_dtype=torch.float32,\n).to(device)"),
        ('"./checkpoints/IP-Adapter", subfolder="models/image_encoder", torch_dtype=torch.float16',
         f'{str(paths["adapters"])!r}, subfolder="sdxl_models/image_encoder", torch_dtype=torch.float32'),
        ('"./checkpoints/sdxlUnstableDiffusers_v8HeavensWrathVAE",\n                controlnet=controlnet,',
         f"{str(paths['sdxl'])!r},\n                controlnet=controlnet,"),
        ("                torch_dtype=torch.float16,\n                use_safetensors=True,\n"
         '                variant="fp16",',
         "                torch_dtype=torch.float32,\n                use_safetensors=True,"),
        ('    ["checkpoints/IP-Adapter", \n     "checkpoints/IP-Adapter", \n    ],',
         f"    [{str(paths['adapters'])!r}, {str(paths['adapters'])!r}],"),
        ('        "ip-adapter_sdxl_vit-h.safetensors",\n        "ip-adapter_sdxl_vit-h.safetensors",',
         '        "ip-adapter_sdxl.safetensors",\n        "ip-adapter_sdxl.safetensors",'),
        ("scale_global = 0.3 #", f"scale_global = {case['restyle_content_scale']} #"),
        ("controlnet_conditioning_scale=0.6,", f"controlnet_conditioning_scale={case['control_scale']},"),
        ("style_guidance_scale=0.0,", f"style_guidance_scale={case['style_guidance']},"),
        ("content_guidance_scale=0.0,", f"content_guidance_scale={case['content_guidance']},"),
        ('images[0].save(f"result_{style_sim}_{content_sim}.jpg")', "pass  # the scores are kept, no JPEG"),
    ])
    return text


def write_openai_clip(folder: Path, csd_checkpoint: Path) -> None:
    """Patch 5: ``models/ViT-L-14.pt``, an OpenAI CLIP state dict whose visual tower fits the CSD checkpoint."""
    import torch
    from clip.model import CLIP

    state = {k.removeprefix("module."): v for k, v in torch.load(csd_checkpoint)["model_state_dict"].items()}
    width, _, patch, _ = state["backbone.conv1.weight"].shape
    grid = round((state["backbone.positional_embedding"].shape[0] - 1) ** 0.5)
    layers = len({k.split(".")[3] for k in state if k.startswith("backbone.transformer.resblocks.")})
    torch.manual_seed(0)
    model = CLIP(embed_dim=state["last_layer_style"].shape[1], image_resolution=grid * patch, vision_layers=layers,
                 vision_width=width, vision_patch_size=patch, context_length=77, vocab_size=64, transformer_width=64,
                 transformer_heads=1, transformer_layers=1)
    (folder / "models").mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "models" / "ViT-L-14.pt")


def run_case(checkout: Path, csd_score: Path, work: Path, name: str, case: dict[str, object],
             paths: dict[str, Path]) -> dict[str, object]:
    """Run the patched script in ``work`` and return what it made."""
    import numpy as np
    import src.utils.enums_utils as enums  # the checkout is on sys.path
    import torch

    enums.is_float16 = lambda model_type: False  # patch 4
    source = (checkout / "infer_style.py").read_text()
    namespace: dict[str, object] = {"__name__": "__main__", "__file__": str(checkout / "infer_style.py")}
    os.chdir(work)
    with torch.random.fork_rng(devices=[]):
        exec(compile(script_for(source, case, paths), str(checkout / "infer_style.py"), "exec"), namespace)
    image = namespace["images"][0]  # type: ignore[index]
    return {
        "latent": namespace["inv_latent"].detach().float().numpy(),  # type: ignore[attr-defined]
        "image": np.asarray(image.convert("RGB"), dtype=np.uint8),
        "control": np.asarray(namespace["anyline_image"], dtype=np.uint8)[..., 0],  # type: ignore[arg-type]
        "style_sim": np.float64(namespace["style_sim"]),  # type: ignore[arg-type]
        "content_sim": np.float64(namespace["content_sim"]),  # type: ignore[arg-type]
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkout", type=Path, help="instantX-research/InstantStyle-Plus at 2beaef4")
    parser.add_argument("csd_score", type=Path, help="haofanwang/CSD-Score (the CSD_Score package)")
    parser.add_argument("--fixtures", type=Path, default=Path(tempfile.gettempdir()) / "instantstyle-plus-fixtures")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "tests" / "data" / "restyle")
    parser.add_argument("--only", nargs="*", default=None, help="case names to make (default: all)")
    args = parser.parse_args()
    import numpy as np

    checkout, csd_score = args.checkout.resolve(), args.csd_score.resolve()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    patch_imports()  # before anything imports transformers, which looks for torchvision
    paths = build_fixtures(args.fixtures.resolve())
    work = Path(tempfile.mkdtemp(prefix="instantstyle-plus-"))
    (work / "CSD_Score").symlink_to(csd_score)
    write_openai_clip(work, paths["csd"])
    sys.path[:0] = [str(checkout), str(work)]
    cases = {}
    for name, changes in CASES.items():
        if args.only and name not in args.only:
            continue
        case = {**DEFAULT, **changes}
        made = run_case(checkout, csd_score, work, name, case, paths)
        np.savez_compressed(out / f"{name}.npz", **made)  # type: ignore[arg-type]
        cases[name] = case
        print(f"{name}: latent {made['latent'].shape}, image {made['image'].shape}, "  # type: ignore[union-attr]
              f"style {made['style_sim']:.4f}, content {made['content_sim']:.4f}", flush=True)
    if not args.only:
        (out / "cases.json").write_text(json.dumps(cases, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
