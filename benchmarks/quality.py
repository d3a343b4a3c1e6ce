#!/usr/bin/env python
"""Style, prompt fidelity and content leak of each method, side by side: the comparison the papers' tables make.

    python benchmarks/quality.py --styles DIR --prompts prompts.txt [--model M --adapter A] [--csd FILE] --out OUT
    python benchmarks/quality.py --fixtures --out OUT    # offline, tiny random-weight models: numbers meaningless

Over every style image in ``--styles`` (``NAME.png``/``.jpg``/``.webp``; a ``NAME.txt`` beside it says what
the reference shows: the content prompt for subtraction and for the leak score) and every prompt, with
the same seeds, each method makes one image per seed:

- no adapter (the floor): every block at scale 0, which is the base model itself;
- IP-Adapter on all blocks (the original method);
- InstantStyle, style blocks; style+layout blocks;
- InstantStyle, style blocks with content subtraction (only for styles with a ``.txt``).

Every image gets ``instantstyle.scores.scorer`` (CLIP text, CLIP style, content leak, CSD with ``--csd``). OUT
receives ``scores.jsonl`` (one line per image), ``table.md`` (mean ± sample std per method) and
``plot.png`` (mean style vs mean prompt score per method, std bars, Pareto front). With the real SDXL
and h94 weights this is reproducible by anyone with a GPU; no numbers are quoted here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a clean clone

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
FIXTURE_NOTE = "tiny random-weight fixtures: the numbers are meaningless (this run only checks the benchmark works)"
#: (name, request changes); ``content`` marks the method that subtracts the reference's content.
METHODS: list[tuple[str, dict[str, Any]]] = [
    ("no adapter (floor)", {"blocks": "all", "scale": 0.0}),
    ("IP-Adapter, all blocks", {"blocks": "all"}),
    ("InstantStyle: style", {"blocks": "style"}),
    ("InstantStyle: style+layout", {"blocks": "style+layout"}),
    ("InstantStyle: style - content", {"blocks": "style", "content": True}),
]


def read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompts:
        lines = Path(args.prompts).read_text(encoding="utf-8").splitlines()
        prompts += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        sys.exit("give prompts: --prompts FILE (one per line) or --prompt TEXT")
    return prompts


def read_styles(folder: Path) -> list[tuple[Path, str | None]]:
    """(style image, content description from NAME.txt or None), sorted by name."""
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        sys.exit(f"no style images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    out = []
    for image in images:
        text = image.with_suffix(".txt")
        out.append((image, text.read_text(encoding="utf-8").strip() or None if text.is_file() else None))
    return out


def fixture_setup(args: argparse.Namespace, out: Path) -> None:
    """Point the run at the tiny fixtures: SDXL + adapter, two procedural styles with content texts, a tiny CSD."""
    from instantstyle.testing import make_style_image, tiny_models
    from instantstyle.testing.csd import build_csd_checkpoint

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tiny = tiny_models(Path(args.fixture_dir) if args.fixture_dir else None)
    styles = out / "styles"
    styles.mkdir(parents=True, exist_ok=True)
    for seed, content in ((0, "stripes and blobs"), (5, "a house")):
        make_style_image(styles / f"pattern{seed}.png", (96, 64), seed=seed)
        (styles / f"pattern{seed}.txt").write_text(content + "\n", encoding="utf-8")
    args.styles, args.model, args.adapter = str(styles), str(tiny.sdxl), str(tiny.sdxl_adapter)
    args.csd = args.csd or str(build_csd_checkpoint(out / "csd-tiny.safetensors", "safetensors"))
    args.prompt, args.prompts = args.prompt or ["a cat", "the house"], None
    args.size, args.device = args.size or 64, "cpu"


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from instantstyle import Request, StylePipeline
    from instantstyle.core.request import write_png
    from instantstyle.scores.csd import load_csd
    from instantstyle.scores.scorer import Scores
    from instantstyle.scores.scorers import Scorers

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.fixtures:
        fixture_setup(args, out)
    prompts, styles = read_prompts(args), read_styles(Path(args.styles))
    kwargs = {"device": args.device, "dtype": args.dtype, "keep_all_weights": True}
    if args.content_text_encoder:
        kwargs["content_text_encoder"] = args.content_text_encoder
    pipe = StylePipeline.from_pretrained(args.model, args.adapter, **kwargs)
    csd = load_csd(args.csd, pipe.resources.device, pipe.resources.dtype) if args.csd else None
    scorer = Scorers(pipe).scorer(args.content_text_encoder, csd)
    for key, reason in scorer.unavailable().items():
        print(f"note: {key} not scored: {reason}", file=sys.stderr)

    records: list[dict[str, Any]] = []
    started = time.perf_counter()
    for style, content in styles:
        for p, prompt in enumerate(prompts):
            for seed in range(args.seed, args.seed + args.seeds):
                base = Request(prompt, style=(str(style),), steps=args.steps, guidance=args.guidance, seed=seed,
                               scale=args.scale, width=args.size, height=args.size)
                for method, changes in METHODS:
                    changes = dict(changes)
                    if changes.pop("content", False):
                        if content is None:
                            continue  # nothing to subtract: no NAME.txt for this style
                        changes.update(content_prompt=content, content_scale=args.content_scale)
                    result = pipe(base.replace(**changes))
                    scores: Scores = scorer.score_request(result.images, result.request, content_prompt=content)[0]
                    record = {"method": method, "style": style.name, "prompt": prompt, "seed": seed,
                              **scores.to_dict()}
                    if args.save_images:
                        name = re.sub(r"[^A-Za-z0-9+.-]+", "_", f"{style.stem}-p{p}-s{seed}-{method}").strip("_")
                        (out / "images").mkdir(exist_ok=True)
                        path = write_png(result.images[0], out / "images" / f"{name}.png", result.request)
                        record["image"] = str(path.relative_to(out))
                    records.append(record)
                    print(json.dumps(record), flush=True)
    seconds = time.perf_counter() - started
    with (out / "scores.jsonl").open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    where, dtype = pipe.resources.device, pipe.resources.dtype
    device = torch.cuda.get_device_name(where) if where.type == "cuda" else platform.processor() or "cpu"
    return {"records": records, "seconds": seconds, "device": f"{where.type} ({device})",
            "dtype": str(dtype).removeprefix("torch."), "prompts": prompts, "styles": styles}


def report(args: argparse.Namespace, run_info: dict[str, Any]) -> str:
    """The markdown table (mean ± std per method) and the plot; returns the markdown."""
    from instantstyle.scores.pareto import Cell, pareto_front, style_key
    from instantstyle.scores.plots import save_plot, scatter_plot
    from instantstyle.scores.scorer import SCORE_KEYS, SCORE_TITLES, Scores, summarize, text_table

    out = Path(args.out)
    names = [name for name, _ in METHODS]
    groups = {name: [Scores(**{k: r[k] for k in SCORE_KEYS}) for r in run_info["records"] if r["method"] == name]
              for name in names}
    groups = {name: scores for name, scores in groups.items() if scores}
    summaries = {name: summarize(scores) for name, scores in groups.items()}
    rows = [[name, str(len(groups[name])), *(str(s) if (s := summaries[name][k]) else "-" for k in SCORE_KEYS)]
            for name in groups]
    lines = [
        "# Quality: style, prompt fidelity and content leak per method",
        "",
        *([f"**{FIXTURE_NOTE}**", ""] if args.fixtures else []),
        f"model `{args.model}`, adapter `{args.adapter}`, CSD `{args.csd or 'none'}`; {run_info['device']}, "
        f"{run_info['dtype']}; {args.size or 'native'} px, {args.steps} steps, guidance {args.guidance}, "
        f"scale {args.scale}, content scale {args.content_scale}; {len(run_info['styles'])} styles x "
        f"{len(run_info['prompts'])} prompts x {args.seeds} seed(s) from {args.seed}.",
        "",
        "Mean ± sample standard deviation over the images of each method (cosines in [-1, 1]; higher is better",
        "except content leak, which is scored against each style's NAME.txt and is `-` without one).",
        "",
        text_table(["method", "images", *SCORE_KEYS], rows, markdown=True),
        "",
    ]
    markdown = "\n".join(lines)
    (out / "table.md").write_text(markdown, encoding="utf-8")

    cells = [Cell({}, Scores(**{k: (s.mean if (s := summaries[n][k]) else None) for k in SCORE_KEYS}), n)
             for n in groups]
    key = style_key(cells)
    points = [None if c.scores.get(key) is None or c.scores.clip_text is None
              else (c.scores.get(key), c.scores.clip_text) for c in cells]
    errors = [None if p is None else (summaries[n][key].std, summaries[n]["clip_text"].std)  # type: ignore[union-attr]
              for n, p in zip(groups, points, strict=True)]
    plot = scatter_plot(points, list(groups), SCORE_TITLES[key], SCORE_TITLES["clip_text"], front=pareto_front(points),
                        errors=errors, title="mean per method, bars: ± 1 std",
                        note=FIXTURE_NOTE if args.fixtures else f"{run_info['device']}, {run_info['dtype']}")
    save_plot(plot, out / "plot.png")
    return markdown


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--styles", help="folder of style images (NAME.txt beside one: what it shows)")
    parser.add_argument("--prompts", help="text file, one prompt per line (# comments)")
    parser.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    parser.add_argument("--model", default="stabilityai/stable-diffusion-xl-base-1.0")
    parser.add_argument("--adapter", default="h94/IP-Adapter/sdxl_models/ip-adapter_sdxl.safetensors")
    parser.add_argument("--content-text-encoder", default=None, help="CLIP text tower for ViT-H adapters")
    parser.add_argument("--csd", default=None, help="CSD checkpoint (the authors' checkpoint.pth or .safetensors)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--size", type=int, default=None, help="image side in px (default: the model's)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (30; 2 with --fixtures)")
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--scale", type=float, default=1.0, help="adapter scale of every method but the floor")
    parser.add_argument("--content-scale", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=1, help="seeds per (style, prompt)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--save-images", action="store_true", help="also keep every image under OUT/images")
    parser.add_argument("--fixtures", action="store_true", help="offline check on the tiny random-weight fixtures")
    parser.add_argument("--fixture-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.fixtures and not args.styles:
        parser.error("give --styles DIR (or --fixtures)")
    args.steps = args.steps or (2 if args.fixtures else 30)
    from instantstyle.errors import UserError

    try:
        print(report(args, run(args)))
    except UserError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
