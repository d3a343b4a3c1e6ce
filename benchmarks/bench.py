#!/usr/bin/env python
"""What a style costs: plain SDXL (a) vs diffusers' own IP-Adapter recipe (b) vs instantstyle (c).

    python benchmarks/bench.py                # CPU: FLOPs, per-step overhead, paired timing, memory (~14 min, 16 GiB)
    python benchmarks/bench.py --gpu          # GPU: 1024 px, fp16, 30 steps, real-size encoders (~4 min on an H100)
    python benchmarks/bench.py --smoke        # every code path on a tiny SDXL-shaped model (a minute or two)
    python benchmarks/bench.py --gpu --smoke  # the GPU mode's code path on the tiny model (the CPU if no GPU)
    python benchmarks/bench.py --parts flops  # only the exact cost (seconds per row, no memory)

Four parts, one markdown report (stdout, and ``--out`` rewritten after each part):

1. ``flops``  exact cost: FLOPs per CFG step for every preset and mode, resident adapter size, FLOPs per
   image (``flops.py``): machine-independent.
2. ``step``   per-step overhead: one UNet forward with plain, pruned (c) and full (b) processors, same
   weights and inputs, interleaved (``step.py``).
3. ``paired`` paired timing: the contestants interleaved in persistent worker processes; per-round ratios,
   their spread, and the noise floor a'/a (``paired.py``).
4. ``memory`` the peak memory of each phase of an image (text, style, denoise, decode): instantstyle's memory
   options each alone in its process (GPU: defaults, ``--offload model``, ``--memory-budget``; CPU:
   ``--memory-budget``), run first (before the timed parts, whose budget starts after it), then the paired
   contestants' when they have run, against the budget.

Offline: the models are random-weight SDXL components built from the public configs (``common.py``), saved
once under ``--workdir`` at the run's dtype and loaded back through the real loaders.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import common
import flops
import paired
import step
import torch
from common import FULL, PRESETS, TOPOLOGIES, RunSpec, build_tree, log

#: Per mode: topology, image size and steps (paired), UNet size of the per-step part, the most rounds of each,
#: the seconds the timed parts may take (rounds stop early to fit, at least 3 each) and the per-step part's share,
#: the memory options measured alone and the budget of ``--memory-budget`` (the CPU runs in float32, where the
#: UNet alone is 9.6 GiB: 16 GiB there). The CPU's 192 px keeps the whole run under 15 minutes on 2 busy cores.
#: The CPU times the per-step part at 128 px: more rounds than at a larger size, and the per-layer overhead it
#: looks for is a larger share of a smaller forward.
MODES: dict[str, dict[str, Any]] = {
    "cpu": dict(topology="small", size=192, steps=2, step_size=128, rounds=10, step_rounds=12, budget_s=560,
                step_budget_s=80, alone="c-budget", memory_budget=16.0),
    "gpu": dict(topology="full", size=1024, steps=30, step_size=1024, rounds=10, step_rounds=20, budget_s=120,
                step_budget_s=25, alone="c-default,c-offload,c-budget", memory_budget=8.0),
    "smoke": dict(topology="smoke", size=64, steps=2, step_size=64, rounds=3, step_rounds=3, budget_s=300,
                  step_budget_s=30, alone="c-default,c-offload,c-budget", memory_budget=8.0),
}
PARTS = ("flops", "step", "paired", "memory")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--gpu", action="store_true", help="GPU mode: cuda, fp16, 1024 px, 30 steps, full encoders")
    parser.add_argument("--smoke", action="store_true", help="tiny SDXL-shaped models: tests every code path")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated: {', '.join(PARTS)}")
    parser.add_argument("--preset", choices=PRESETS, default="style", help="blocks preset timed (FLOPs: all)")
    parser.add_argument("--topology", choices=sorted(TOPOLOGIES), default=None,
                        help="full (SDXL + ViT-bigG), small (same widths, encoders with fewer layers: CPU default) "
                        "or smoke")
    parser.add_argument("--size", type=int, default=None, help="image side in px (CPU 192, GPU 1024)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps per image (CPU 2, GPU 30)")
    parser.add_argument("--step-size", type=int, default=None, help="px of the per-step part (CPU 128, GPU 1024)")
    parser.add_argument("--rounds", type=int, default=None, help="paired rounds at most (CPU 10, GPU 10)")
    parser.add_argument("--step-rounds", type=int, default=None, help="per-step rounds at most (CPU 12, GPU 20)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="seconds for the timed parts (CPU 560, GPU 120); rounds stop early to fit, at least 3")
    parser.add_argument("--step-budget-s", type=float, default=None, help="seconds of it for per-step rounds")
    parser.add_argument("--memory-budget", type=float, default=None,
                        help="GiB for the --memory-budget contestant (GPU 8, CPU 16)")
    parser.add_argument("--alone", default=None, help="memory options measured alone, comma-separated (CPU "
                        "c-budget; GPU c-default,c-offload,c-budget)")
    parser.add_argument("--threads", type=int, default=0, help="threads per process (default: one per CPU)")
    parser.add_argument("--cpus", default="", help="CPUs to pin every process to, e.g. 0-7 (default: all allowed)")
    parser.add_argument("--workdir", default=os.path.expanduser("~/.cache/instantstyle-bench"),
                        help="random-weight model trees (CPU small fp32: ~14 GB; GPU full fp16: ~11 GB) and logs")
    parser.add_argument("--out", default=None, help="write the markdown report here (rewritten after each part)")
    parser.add_argument("--json", default=None, help="also write the report's sections and the raw measurements "
                        "here (the docs' performance page is generated from such a file)")
    args = parser.parse_args(argv)
    mode = MODES["smoke" if args.smoke else "gpu" if args.gpu else "cpu"]
    for key, value in mode.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.device = "cuda" if args.gpu and torch.cuda.is_available() else "cpu"
    if args.gpu and args.device == "cpu" and not args.smoke:
        parser.error("--gpu asked for, but no CUDA GPU is available (add --smoke to try the code path on the CPU)")
    args.dtype = "float16" if args.gpu else "float32"
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    args.alone = [a.strip() for a in args.alone.split(",") if a.strip()]
    if set(args.alone) - set(common.C_OPTIONS):
        parser.error(f"unknown --alone contestants (choose from {', '.join(common.C_OPTIONS)})")
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    return args


def parse_cpus(text: str) -> tuple[int, ...]:
    """``0-3,6`` -> (0, 1, 2, 3, 6)."""
    cpus: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return tuple(cpus)


class Report:
    """The markdown report, rewritten to ``path`` after each part so a run cut short still leaves one; with
    ``json_path``, the same sections and the raw measurements as JSON (``{"report": {key: markdown}, "raw": ...}``),
    from which the docs site's performance page is generated (``docs/performance.md``)."""

    def __init__(self, path: str | None, header: str, json_path: str | None = None) -> None:
        self.path = Path(path) if path else None
        self.json_path = Path(json_path) if json_path else None
        self.sections = {"header": header}
        self.raw: dict[str, Any] = {}

    def add(self, text: str, key: str | None = None) -> None:
        """Add a section (or replace the one of that ``key``, in its place) and rewrite the files."""
        self.sections[key or f"section {len(self.sections)}"] = text
        self.write()

    def write(self) -> None:
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(self.text())
        if self.json_path:
            self.json_path.parent.mkdir(parents=True, exist_ok=True)
            self.json_path.write_text(json.dumps({"report": self.sections, "raw": self.raw}, indent=1) + "\n")

    def text(self) -> str:
        return "\n\n".join(self.sections.values()) + "\n"


def flops_section(args: argparse.Namespace, topo: common.Topology) -> str:
    if args.smoke:
        return flops.report(topo, [args.size], PRESETS, flops.MODES, [(topo, args.size, args.steps, 5)], args.preset)
    if args.gpu:  # the table is the same from any machine: the GPU run counts only what it times
        return flops.report(FULL, [args.size], [args.preset], ["text"], [(FULL, args.size, args.steps, 5)],
                            args.preset)
    return flops.report(FULL, [512, 1024], PRESETS, flops.MODES,
                        [(FULL, 1024, 30, 5), (topo, args.size, args.steps, 5)], args.preset, dit_sizes=[512, 1024])


def step_flops(topo: common.Topology, size: int, preset: str) -> dict[str, int]:
    counts = {k: flops.step_flops(flops.contestant_pipeline(topo, k, preset), size) for k in "abc"}
    return {"plain": counts["a"], "plain2": counts["a"], "pruned": counts["c"], "full": counts["b"]}


def run_step(args: argparse.Namespace, spec: RunSpec, logdir: Path, budget_s: float) -> dict[str, Any]:
    """The per-step part in its own process (its memory is gone before the paired workers load)."""
    spec = replace(spec, size=args.step_size)
    cmd = [sys.executable, str(Path(__file__).with_name("step.py")), "--spec", spec.to_json(),
           "--rounds", str(args.step_rounds), "--budget-s", str(budget_s)]
    with (logdir / "step.log").open("w") as err:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                              env=common.worker_env(spec.threads, spec.device))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"step part failed:\n{(logdir / 'step.log').read_text()[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def memory_section(args: argparse.Namespace, where: str, results: dict[str, Any]) -> str:
    kind = "GPU" if args.device == "cuda" else "CPU"
    if kind == "GPU":
        what = ("`torch.cuda.max_memory_allocated` of each phase (reset at each phase's start, so a phase's peak "
                "includes what stays resident through it).")
    else:
        what = ("peak RSS of each phase (`VmHWM`, reset at each phase's start through `/proc/self/clear_refs`). On "
                "the CPU every model already lives in RAM, so the budget moves nothing: its figures are the "
                "order of the phases and the encoders it frees; the GPU figure is what the budget is for.")
    options = ", ".join(common.LABELS[n] for n in args.alone)
    return "\n".join([
        f"### Memory per phase ({kind} figures; {where})",
        "",
        f"{args.size}x{args.size} px, {args.steps} steps, preset {args.preset}; {what} (a), (b) and (c) "
        f"(`--low-memory`), once they have run, are the paired workers (first and timed images); {options} "
        "each ran alone in its process: a first image (encodes the style) and a second (style known). "
        "`--memory-budget` is "
        f"{args.memory_budget:g} GiB. setup: before the first phase (request preparation, input checks).",
        "",
        paired.memory_table(results, args.device, args.memory_budget),
    ])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    topo = TOPOLOGIES[args.topology]
    workdir = Path(args.workdir).expanduser()
    logdir = workdir / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    mode = "smoke" if args.smoke else "GPU" if args.gpu else "CPU"
    where = common.device_name(args.device, args.dtype)
    command = " ".join(["python benchmarks/bench.py", *(argv if argv is not None else sys.argv[1:])])
    header = "\n".join([
        f"## instantstyle benchmark, {mode} mode ({where})",
        "",
        f"{common.versions()}; `{command}`",
        f"Timed configuration: {args.size}x{args.size} px, {args.steps} steps, guidance 5.0, preset {args.preset}, "
        f"{topo.name}-size model (UNet {'full size' if topo.name != 'smoke' else 'tiny'}), {args.dtype}.",
    ])
    report = Report(args.out, header, args.json)
    raw = report.raw

    if "flops" in args.parts:
        log("counting FLOPs on the meta device")
        report.add(flops_section(args, topo), key="flops")
        log(f"FLOPs done at {time.perf_counter() - start:.0f} s")

    timed_parts = [p for p in ("step", "paired", "memory") if p in args.parts]
    if timed_parts:
        tree = build_tree(workdir, topo, getattr(torch, args.dtype), device=args.device)
        spec = RunSpec(str(tree.root), args.device, args.dtype, args.size, args.steps, preset=args.preset,
                       topology=topo.name, threads=args.threads, cpus=parse_cpus(args.cpus),
                       memory_budget=args.memory_budget)
        kind = "GPU" if args.device == "cuda" else "CPU"
        alone: dict[str, Any] = {}
        if "memory" in timed_parts:  # first: on a GPU the memory options are this run's priority
            log("memory options")
            alone = paired.run_alone(spec, args.alone, logdir, parallel=args.gpu)
            raw["memory"] = alone
            report.add(memory_section(args, where, alone), key="memory")
        timed_start = time.perf_counter()  # the timed parts' budget starts after building the models
        if "step" in timed_parts:
            log("per-step overhead")
            left = args.budget_s - (time.perf_counter() - timed_start)
            result = run_step(args, spec, logdir, min(args.step_budget_s, max(left, 0.0)))
            raw["step"] = result
            report.add(key="step", text="\n".join([
                f"### Per-step overhead ({kind} figures; {where})",
                "",
                f"One UNet forward (CFG batch 2, {args.step_size} px), same weights and inputs, processors swapped "
                f"between forwards in rotated order; {len(result['wall']['plain'])} rounds, {result['threads']} "
                f"threads pinned to CPUs {result['cpus']}. Ratios are per round against the plain forward of the "
                "same round.",
                "",
                step.table(result, step_flops(topo, args.step_size, args.preset)),
            ]))
        if "paired" in timed_parts:
            log("paired timing")
            budget = max(args.budget_s - (time.perf_counter() - timed_start), 0.0)
            results = paired.run(spec, ["a", "a2", "b", "c"], args.rounds, budget, logdir, parallel_load=args.gpu)
            raw["paired"] = results
            n = len(results["a"]["wall"])
            report.add(key="paired", text="\n".join([
                f"### Paired timing ({kind} figures; {where})",
                "",
                f"Each contestant loaded once in its own process ({results['a']['threads']} threads pinned to CPUs "
                f"{results['a']['cpus']}), warmed up by a first image, then {n} rounds of one image each, same "
                "prompt and seed, order rotated each round. Ratios are per round; (a') is a second copy of (a), "
                "timed the same way: its ratio is the noise floor.",
                "",
                paired.tables(results, args.device),
            ]))
            if "memory" in timed_parts:  # the paired contestants' phases join the memory table
                measured = {k: v for k, v in results.items() if k in ("a", "b", "c")}
                report.add(memory_section(args, where, {**measured, **alone}), key="memory")
    report.write()
    log(f"done in {time.perf_counter() - start:.0f} s")
    print(report.text())


if __name__ == "__main__":
    main()
