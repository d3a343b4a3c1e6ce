#!/usr/bin/env python
"""Reference images for refactors: the same requests through every surface, saved or compared pixel by pixel.

    python benchmarks/pixel_baseline.py save /work/baseline-images       # before changing code
    python benchmarks/pixel_baseline.py compare /work/baseline-images    # after: every image, max difference

Runs offline on the project's tiny random-weight fixtures (built once under ``FOLDER/fixtures`` and
reused, so both runs see the same weights). Each case writes ``CASE.png`` (the image, with its completed
request in the PNG) and ``CASE.json`` (the request as asked). Cases cover SDXL and SD1.5, every mode,
composition, regions, schedule, blends, further and plus adapters, content subtraction, LoRA,
schedulers, style files, style fit, low memory, the disk cache, offload, compile, single-file and
inpainting checkpoints, the CLI (generate, sweep), and batches of 2 through ``run_batch``. The order is fixed
(a request leaves its pipeline as it found it, so it should not matter; the saved images were made in it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

FAST = {"steps": 2, "width": 64, "height": 64, "seed": 7}


def build(folder: Path) -> tuple[Any, Any, dict[str, Path]]:
    from instantstyle.testing import tiny_models
    from instantstyle.testing.lora import write_tiny_lora
    from instantstyle.testing.modes import tiny_mode_models
    from instantstyle.testing.single_file import export_single_file

    root = folder / "fixtures"
    tiny = tiny_models(root / "tiny")
    modes = tiny_mode_models(root / "modes", tiny)
    extra = {
        "lora_peft": root / "lora-peft.safetensors",
        "lora_kohya": root / "lora-kohya.safetensors",
        "single": root / "sdxl-single.safetensors",
    }
    if not extra["lora_peft"].exists():
        write_tiny_lora(tiny.sdxl, extra["lora_peft"], "peft")
        write_tiny_lora(tiny.sdxl, extra["lora_kohya"], "kohya")
        export_single_file(tiny.sdxl, extra["single"])
    return tiny, modes, extra


def cases(tiny: Any, modes: Any, extra: dict[str, Path]) -> list[tuple[str, str, dict[str, Any]]]:
    """(case name, pipeline name, request fields), in the order they run."""
    s, s2, wide = str(tiny.style_image), str(modes.second_style), str(modes.wide_style)
    init, left, right = str(modes.init_image), str(modes.left_mask), str(modes.right_mask)
    xl_cn, sd_cn = str(modes.sdxl_controlnet), str(modes.sd15_controlnet)
    plus_xl, plus_sd = str(tiny.sdxl_plus_adapter), str(tiny.sd15_plus_adapter)
    vith_text = str(tiny.content_text_encoder)
    out: list[tuple[str, str, dict[str, Any]]] = []

    def add(name: str, pipe: str, **fields: Any) -> None:
        out.append((name, pipe, {"prompt": "a cat", "style": s, **FAST, **fields}))

    # SDXL, every weight kept
    add("xl-style", "sdxl")
    add("xl-all", "sdxl", blocks="all")
    add("xl-style+layout-0.7", "sdxl", blocks="style+layout", scale=0.7)
    add("xl-custom-blocks", "sdxl", blocks="up_blocks.0.attentions.1=1,down_blocks.2.attentions.1=0.4")
    add("xl-scale0", "sdxl", scale=0.0)
    add("xl-negative", "sdxl", negative_prompt="blurry", prompt="a dog")
    add("xl-guidance1", "sdxl", guidance=1.0)
    add("xl-content-prompt", "sdxl", content_prompt="a dog", content_scale=0.5)
    add("xl-content-image", "sdxl", content_image=str(tiny.content_image), content_scale=0.7)
    add("xl-num-images-2", "sdxl", num_images=2, content_prompt="a dog")
    add("xl-blend", "sdxl", style=(s, f"{s2}:0.5"))
    add("xl-fit-pad", "sdxl", style=wide, style_fit="pad")
    add("xl-fit-tiles", "sdxl", style=wide, style_fit="tiles")
    add("xl-fit-crop-wide", "sdxl", style=wide)
    add("xl-img2img", "sdxl", init_image=init, strength=0.5, steps=4)
    add("xl-img2img-default-size", "sdxl", init_image=init, width=None, height=None, steps=3)
    add("xl-inpaint", "sdxl", init_image=init, mask=left)
    add("xl-canny", "sdxl", control="canny", control_image=init, controlnet=xl_cn, control_scale=0.7)
    add("xl-depth-map", "sdxl", control="depth", control_image=str(modes.depth_map), controlnet=xl_cn)
    add("xl-depth-model", "sdxl", control="depth", control_image=init, controlnet=xl_cn,
        depth_model=str(modes.depth_model))
    add("xl-ready-control", "sdxl", control=str(modes.depth_map), controlnet=xl_cn)
    add("xl-canny-img2img", "sdxl", control="canny", controlnet=xl_cn, init_image=init, steps=3)
    add("xl-canny-inpaint", "sdxl", control="canny", controlnet=xl_cn, init_image=init, mask=right)
    add("xl-composition", "sdxl", composition=init)
    add("xl-composition-0.5", "sdxl", composition=s2, composition_scale=0.5)
    add("xl-regions", "sdxl", style=(s, s2), regions=(left, right), width=128, height=128)
    add("xl-regions-weights", "sdxl", style=(s, f"{s2}:0.5"), regions=(left, right))
    add("xl-schedule-late", "sdxl", style_start=0.5, steps=4)
    add("xl-schedule-early", "sdxl", style_end=0.5, steps=4)
    add("xl-further-plus", "sdxl", adapters=[f"{plus_xl};style={s2};blocks=layout;scale=0.6"])
    add("xl-further-regions", "sdxl", adapters=[f"{tiny.sdxl_vith_adapter};style={s};style={s2};"
                                                f"region={left};region={right};blocks=style"], composition=init)
    add("xl-back-to-one-adapter", "sdxl")
    add("xl-euler-a", "sdxl", scheduler="euler-a")
    add("xl-dpm-karras", "sdxl", scheduler="dpm++-2m-karras", steps=3)
    add("xl-lcm", "sdxl", scheduler="lcm", guidance=1.0)
    add("xl-back-to-default-scheduler", "sdxl", prompt="a shell")
    add("xl-style-file", "sdxl", style="@stylefile")
    add("xl-vae-tiling", "sdxl", width=1088, height=64, steps=1)
    add("xl-everything", "sdxl", style=(s, f"{s2}:0.5"), init_image=init, mask=left, control="canny",
        controlnet=xl_cn, control_scale=0.5, composition=init, regions=(left, right), style_end=0.5, style_fit="pad",
        steps=4)
    # SDXL, pruned to the requested blocks (default loading), re-targeted later
    add("xlp-style", "sdxl-pruned")
    add("xlp-all-reload", "sdxl-pruned", blocks="all")
    add("xlp-further", "sdxl-pruned", adapters=[f"{plus_xl};style={s2};blocks=layout"])
    add("xlp-style-again", "sdxl-pruned")
    # other adapters and loading modes
    add("xl-plus-all", "sdxl-plus", blocks="all")
    add("xl-plus-regions-composition", "sdxl-plus", style=(s, s2), regions=(left, right), composition=init,
        style_end=0.5)
    add("xl-vith-content", "sdxl-vith", content_prompt="a rabbit", content_text_encoder=vith_text)
    add("xl-lowmem-cache", "sdxl-lowmem-cache")
    add("xl-lowmem-cache-content", "sdxl-lowmem-cache", content_image=str(tiny.content_image))
    add("xl-inpaint-checkpoint", "sdxl-inpaint", init_image=init, mask=right)
    add("xl-single-file", "sdxl-single")
    add("xl-offload-model", "sdxl-offload")
    add("xl-compile-eager", "sdxl-compile")
    add("xl-bin-adapter", "sdxl-bin")
    # LoRA (on a pipeline of its own since the first baseline)
    add("lora-none", "sdxl-lora", prompt="a mill")
    add("lora-peft", "sdxl-lora", prompt="a mill", lora=(str(extra["lora_peft"]),))
    add("lora-peft-0.5-euler-a", "sdxl-lora", prompt="a mill", lora=(f"{extra['lora_peft']}:0.5",),
        scheduler="euler-a")
    add("lora-kohya", "sdxl-lora", prompt="a mill", lora=(str(extra["lora_kohya"]),))
    add("lora-none-again", "sdxl-lora", prompt="a mill")
    # SD1.5
    add("sd-style", "sd15")
    add("sd-all", "sd15", blocks="all")
    add("sd-style+layout", "sd15", blocks="style+layout", scale=0.8)
    add("sd-content-prompt", "sd15", content_prompt="a dog", content_text_encoder=vith_text)
    add("sd-content-image", "sd15", content_image=str(tiny.content_image))
    add("sd-img2img", "sd15", init_image=init, strength=0.5, steps=4)
    add("sd-inpaint", "sd15", init_image=init, mask=left)
    add("sd-canny", "sd15", control="canny", control_image=init, controlnet=sd_cn)
    add("sd-composition", "sd15", composition=init)
    add("sd-regions", "sd15", style=(s, s2), regions=(left, right), width=128, height=128)
    add("sd-schedule", "sd15", style_start=0.25, style_end=0.75, steps=4)
    add("sd-tiles-further", "sd15", style=(s, f"{wide}:0.5"), style_fit="tiles", composition=init,
        adapters=[f"{plus_sd};style={s2};blocks=layout"])
    add("sd-ddim", "sd15", scheduler="ddim")
    add("sd-inpaint-checkpoint", "sd15-inpaint", init_image=init, mask=right)
    add("sd-plus", "sd15-plus", blocks="all")
    return out


def pipeline_factories(tiny: Any, modes: Any, extra: dict[str, Path], cache: Path) -> dict[str, Callable[[], Any]]:
    from instantstyle import StylePipeline

    def load(model: Any, adapter: Any, **kwargs: Any) -> Callable[[], Any]:
        return lambda: StylePipeline.from_pretrained(str(model), str(adapter), device="cpu", **kwargs)

    return {
        "sdxl": load(tiny.sdxl, tiny.sdxl_adapter, keep_all_weights=True),
        "sdxl-pruned": load(tiny.sdxl, tiny.sdxl_adapter),
        "sdxl-plus": load(tiny.sdxl, tiny.sdxl_plus_adapter, keep_all_weights=True),
        "sdxl-vith": load(tiny.sdxl, tiny.sdxl_vith_adapter),
        "sdxl-lowmem-cache": load(tiny.sdxl, tiny.sdxl_adapter, low_memory=True, cache_dir=str(cache)),
        "sdxl-inpaint": load(modes.sdxl_inpaint, tiny.sdxl_adapter),
        "sdxl-single": load(extra["single"], tiny.sdxl_adapter, single_file_config=str(tiny.sdxl)),
        "sdxl-offload": load(tiny.sdxl, tiny.sdxl_adapter, offload="model"),
        "sdxl-compile": load(tiny.sdxl, tiny.sdxl_adapter, compile_backend="eager"),
        "sdxl-bin": load(tiny.sdxl, tiny.sdxl_adapter_bin),
        "sdxl-lora": load(tiny.sdxl, tiny.sdxl_adapter, keep_all_weights=True),
        "sd15": load(tiny.sd15, tiny.sd15_adapter, keep_all_weights=True),
        "sd15-inpaint": load(modes.sd15_inpaint, tiny.sd15_adapter),
        "sd15-plus": load(tiny.sd15, tiny.sd15_plus_adapter, blocks="all"),
    }


def run_all(folder: Path, out: Path) -> list[str]:
    """Make every case's image(s) in ``out``; returns the names written."""
    from instantstyle import Request
    from instantstyle.core.request import write_png

    tiny, modes, extra = build(folder)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cache = out / "_embedding-cache"
    factories = pipeline_factories(tiny, modes, extra, cache)
    pipes: dict[str, Any] = {}
    names: list[str] = []
    style_file = folder / "fixtures" / "style.safetensors"  # the same path in both runs
    for name, pipe_name, fields in cases(tiny, modes, extra):
        if pipe_name not in pipes:
            pipes[pipe_name] = factories[pipe_name]()
        pipe = pipes[pipe_name]
        if fields["style"] == "@stylefile":
            pipe.save_style(Request("", style=(str(tiny.style_image),)), style_file)
            fields = {**fields, "style": str(style_file)}
        request = Request(**fields)
        (out / f"{name}.json").write_text(request.to_json())
        result = pipe(request)
        for i, image in enumerate(result.images):
            suffix = "" if len(result.images) == 1 else f"-{i + 1}"
            write_png(image, out / f"{name}{suffix}.png", result.request, i)
            names.append(f"{name}{suffix}")
        print(f"{name}: {len(result.images)} image(s)", flush=True)
    names += run_batches(tiny, modes, out, pipes)
    names += run_cli(tiny, modes, out)
    return names


def run_batches(tiny: Any, modes: Any, out: Path, pipes: dict[str, Any]) -> list[str]:
    """``run_batch`` with batch size 2: on a given pipeline (after everything above ran on it), and with
    its own worker loading the model (the batch runtime)."""
    from instantstyle.app.batch import run_batch

    s, s2 = str(tiny.style_image), str(modes.second_style)
    rows = [{"id": f"b{i}", "prompt": f"a house {i}", "style": [s, s2][i // 4], **FAST, "seed": 10 + i}
            for i in range(8)]
    rows.append({"id": "b-solo-img2img", "prompt": "a boat", "style": s, **FAST, "init_image": str(modes.init_image),
                 "strength": 0.5, "steps": 4})
    rows.append({"id": "b-content", "prompt": "a tree", "style": s, **FAST, "content_prompt": "a dog", "seed": 3})
    rows.append({"id": "b-content2", "prompt": "a bush", "style": s, **FAST, "content_prompt": "a dog", "seed": 4})
    jobs = out / "_jobs.jsonl"
    jobs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    names = []
    defaults = {"model": str(tiny.sdxl), "adapter": str(tiny.sdxl_adapter)}
    for label, kwargs in (("batch-given", {"pipeline": pipes["sdxl"]}), ("batch-worker", {})):
        folder = out / f"_{label}"
        report = run_batch(jobs, folder, batch_size=2, defaults=defaults, **kwargs)
        assert report.done == len(rows), report.summary()
        for row in rows:
            shutil.copy(folder / f"{row['id']}.png", out / f"{label}-{row['id']}.png")
            names.append(f"{label}-{row['id']}")
        print(f"{label}: {report.summary()}", flush=True)
    return names


def run_cli(tiny: Any, modes: Any, out: Path) -> list[str]:
    """``instantstyle generate`` and ``instantstyle sweep`` in-process."""
    from instantstyle.app.cli import entry

    common = ["--model", str(tiny.sdxl), "--adapter", str(tiny.sdxl_adapter), "--style", str(tiny.style_image),
              "--prompt", "a cat", "--steps", "2", "--width", "64", "--height", "64", "--seed", "7",
              "--device", "cpu"]
    folder = out / "_cli"
    folder.mkdir()
    runs = {
        "cli-generate": ["generate", *common, "--blocks", "style+layout", "--content-prompt", "a dog",
                         "-o", str(folder / "gen.png")],
        "cli-generate-modes": ["generate", *common, "--init-image", str(modes.init_image), "--mask",
                               str(modes.left_mask), "--control", "canny", "--controlnet", str(modes.sdxl_controlnet),
                               "--style-end", "0.5", "-o", str(folder / "modes.png")],
        "cli-sweep": ["sweep", *common, "--blocks", "style,all", "--scale", "0.5,1", "-o", str(folder / "sheet.png")],
    }
    for label, args in runs.items():
        try:
            entry(args)
        except SystemExit as exit_:
            if exit_.code:
                raise RuntimeError(f"{label} exited {exit_.code}") from None
        print(label, flush=True)
    names = []
    for path in sorted(folder.glob("*.png")):
        shutil.copy(path, out / f"cli-{path.name}")
        names.append(f"cli-{path.stem}")
    return names


def compare(reference: Path, new: Path) -> int:
    """Print every image's largest pixel difference and whether its recorded request is the same."""
    from instantstyle.core.request import PNG_KEY

    worst, missing, changed_requests = 0, [], []
    rows = []
    for path in sorted(reference.glob("*.png")):
        other = new / path.name
        if not other.exists():
            missing.append(path.name)
            continue
        a = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
        b = np.asarray(Image.open(other).convert("RGB"), dtype=np.int16)
        diff = int(np.abs(a - b).max()) if a.shape == b.shape else 999
        worst = max(worst, diff)
        ra, rb = Image.open(path).info.get(PNG_KEY), Image.open(other).info.get(PNG_KEY)
        if ra != rb:
            changed_requests.append(path.name)
        rows.append((path.name, diff))
    for name, diff in rows:
        if diff:
            print(f"DIFF {diff:3d}  {name}")
    print(f"{len(rows)} images compared, {sum(1 for _, d in rows if d == 0)} identical, worst difference {worst}")
    if missing:
        print("missing:", ", ".join(missing))
    if changed_requests:
        print("request metadata differs:", ", ".join(changed_requests))
    return 1 if worst or missing or changed_requests else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["save", "compare"])
    parser.add_argument("folder", type=Path, help="baseline folder (fixtures are kept in FOLDER/fixtures)")
    parser.add_argument("--new", type=Path, default=None, help="where compare writes the new images "
                        "(default FOLDER-new)")
    args = parser.parse_args()
    folder = args.folder.resolve()
    if args.action == "save":
        run_all(folder, folder / "images")
        return 0
    new = (args.new or folder.with_name(folder.name + "-new")).resolve()
    run_all(folder, new)
    return compare(folder / "images", new)


if __name__ == "__main__":
    sys.exit(main())
