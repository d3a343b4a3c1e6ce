#!/usr/bin/env python
"""Paired timing: the contestants interleaved in persistent worker processes, ratios per round.

    (bench.py runs it; ``python benchmarks/paired.py --worker NAME --spec JSON`` is one worker)

Each contestant (``common.LABELS``) is loaded once in its own process, pinned to the same CPUs with the
same thread count, and warmed up by a first image (which also encodes the style). Then every round makes
one image per contestant, same prompt and seed, in an order rotated each round; only one process works at a
time. A round's ratios (c/a, b/a, c/b) compare images made seconds apart, so a slow minute of the machine
slows both sides; the median and spread of the per-round ratios are the result, and a'/a (a second copy
of plain SDXL, timed the same way) is the noise floor. Weights saved at the run's dtype are memory-mapped,
so on the CPU the workers share one copy of them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import common
from common import LABELS, PROMPTS, RunSpec, Spread, fmt_range, fmt_ratio, log, md_table, ratios, rotated

GiB = 2**30


# --- the worker ------------------------------------------------------------------------------------------
def reply(kind: str, payload: dict[str, Any]) -> None:
    print(f"{kind} {json.dumps(payload)}", flush=True)


def worker(name: str, spec: RunSpec) -> None:
    """Load one contestant, then make an image for each ``run <i>`` line on stdin until ``quit``."""
    import torch

    threads, cpus = common.pin_threads(spec.threads, spec.cpus)
    device = torch.device(spec.device)
    encoder_runs = common.count_encoder_runs()
    peak = common.PeakMemory(device)
    phases = common.PhasePeaks(peak)
    peak.reset()
    start = time.perf_counter()
    contestant = common.load_contestant(name, spec, phases)
    common.sync(device)
    reply("READY", {"load_s": time.perf_counter() - start, "load_peak": peak.read(), "threads": threads,
                    "cpus": list(cpus)})
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            break
        prompt = PROMPTS[int(command[1]) % len(PROMPTS)]
        phases.start()
        runs = len(encoder_runs)
        wall, cpu = common.timed(lambda prompt=prompt: contestant.generate(prompt), device)
        by_phase = phases.finish()
        reply("DONE", {"wall": wall, "cpu": cpu, "peak": max(by_phase.values()), "phases": by_phase,
                       "encoder_runs": len(encoder_runs) - runs})
        # Each worker keeps its allocator cache warm (steady state), unless the GPU runs short for the others.
        if device.type == "cuda" and torch.cuda.mem_get_info(device)[0] < 8 * GiB:
            torch.cuda.empty_cache()


# --- the parent ------------------------------------------------------------------------------------------
class Worker:
    """A contestant's process, spoken to by lines on stdin/stdout; its stderr goes to a log file."""

    def __init__(self, name: str, spec: RunSpec, logdir: Path) -> None:
        self.name = name
        self.log_path = logdir / f"worker-{name}.log"
        self._log: IO[str] = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", name, "--spec", spec.to_json()],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1,
            env=common.worker_env(spec.threads, spec.device),
        )

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def receive(self, kind: str) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(kind + " "):
                return json.loads(line[len(kind) + 1:])
        self.proc.wait()
        tail = self.log_path.read_text()[-3000:]
        raise RuntimeError(f"worker {self.name} exited ({self.proc.returncode}) before {kind}:\n{tail}")

    def ask(self, line: str) -> dict[str, Any]:
        self.send(line)
        return self.receive("DONE")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def run(spec: RunSpec, names: Sequence[str], rounds: int, budget_s: float, logdir: Path,
        parallel_load: bool = False) -> dict[str, Any]:
    """Load ``names`` (one after the other, or all at once), warm each up with one image, then time rotated
    rounds until ``rounds`` or ``budget_s`` (at least 3 rounds)."""
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    workers: dict[str, Worker] = {}
    try:
        for name in names:
            workers[name] = Worker(name, spec, logdir)
            if not parallel_load:
                results[name] = workers[name].receive("READY")
                log(f"{name} loaded in {results[name]['load_s']:.1f} s")
        for name in names:
            if parallel_load:
                results[name] = workers[name].receive("READY")
                log(f"{name} loaded in {results[name]['load_s']:.1f} s")
        for name in names:  # warm-up: the first image (encodes the style for b and c)
            first = workers[name].ask("run 0")
            results[name].update(first_wall=first["wall"], first_cpu=first["cpu"], first_peak=first["peak"],
                                 first_phases=first["phases"], first_encoder_runs=first["encoder_runs"], wall=[],
                                 cpu=[], peak=[], phases=[], encoder_runs=0)
            log(f"{name} first image {first['wall']:.2f} s")
        for r in range(rounds):
            round_start = time.perf_counter()
            for name in rotated(names, r):
                done = workers[name].ask(f"run {r + 1}")
                res = results[name]
                res["wall"].append(done["wall"])
                res["cpu"].append(done["cpu"])
                res["peak"].append(done["peak"])
                res["phases"].append(done["phases"])
                res["encoder_runs"] += done["encoder_runs"]
            round_s = time.perf_counter() - round_start
            log(f"round {r + 1}: " + ", ".join(f"{n} {results[n]['wall'][-1]:.2f} s" for n in names))
            if r + 1 >= 3 and time.perf_counter() - started + round_s > budget_s:
                log(f"time budget reached after {r + 1} rounds")
                break
    finally:
        for w in workers.values():
            w.close()
    return results


def run_alone(spec: RunSpec, names: Sequence[str], logdir: Path, parallel: bool = False) -> dict[str, Any]:
    """Memory options: each contestant alone in its process (``parallel``: the processes at once, on a GPU, where
    each one's ``max_memory_allocated`` is its own), a first image (encodes the style) and a second one (style
    known); a contestant that fails is reported with its error, the others still run."""
    results: dict[str, Any] = {}
    workers: dict[str, Worker] = {}

    def measure(name: str) -> None:
        w = workers[name]
        try:
            results[name] = w.receive("READY")
            first = w.ask("run 0")
            done = w.ask("run 1")
            results[name].update(first_wall=first["wall"], first_cpu=first["cpu"], first_peak=first["peak"],
                                 first_phases=first["phases"], first_encoder_runs=first["encoder_runs"],
                                 wall=[done["wall"]], cpu=[done["cpu"]], peak=[done["peak"]],
                                 phases=[done["phases"]], encoder_runs=done["encoder_runs"])
            log(f"{name}: {done['wall']:.2f} s, peak {max(done['peak'], first['peak']) / GiB:.2f} GiB")
        except (RuntimeError, OSError) as err:
            lines = [line for line in str(err).splitlines() if line.strip()]
            results[name] = {"error": lines[-1][-300:] if lines else type(err).__name__, "log": str(err)[-2000:]}
            log(f"{name} failed: {results[name]['error']}")

    try:
        if parallel:
            for name in names:
                workers[name] = Worker(name, spec, logdir)
            for name in names:
                measure(name)
        else:
            for name in names:
                workers[name] = Worker(name, spec, logdir)
                measure(name)
                workers[name].close()
    finally:
        for w in workers.values():
            w.close()
    return {name: results[name] for name in names if name in results}


# --- the report ------------------------------------------------------------------------------------------
def tables(results: dict[str, Any], device: str) -> str:
    """Per-contestant figures, then per-round ratios against the noise floor."""
    memory = "max_memory_allocated" if device.startswith("cuda") else "peak RSS (shared weights counted in each)"
    rows = []
    for name, res in results.items():
        if "error" in res:
            continue
        wall, cpu = Spread.of(res["wall"]), Spread.of(res["cpu"])
        rows.append([
            LABELS[name], f"{res['load_s']:.1f} s", f"{res['first_wall']:.2f} s",
            f"{wall.median:.3f} s [{wall.q1:.3f}–{wall.q3:.3f}]", f"{cpu.median:.3f} s",
            f"{max(res['peak']) / GiB:.2f} GiB", f"{res['first_peak'] / GiB:.2f} GiB",
            f"{res['first_encoder_runs']} + {res['encoder_runs']}",
        ])
    head = ["contestant", "load", "first image (encodes the style)", "per image, median [IQR]",
            "per image, process CPU", f"{memory}, timed images", "same, first image",
            "image encoder runs (first + rest)"]
    parts = [md_table(head, rows)]
    pairs = [("a2", "a", "a'/a: noise floor"), ("b", "a", "b/a"), ("c", "a", "c/a"), ("c", "b", "c/b")]
    ratio_rows = []
    for num, den, label in pairs:
        if num not in results or den not in results or len(results[num]["wall"]) != len(results[den]["wall"]):
            continue
        w = Spread.of(ratios(results[num]["wall"], results[den]["wall"]))
        c = Spread.of(ratios(results[num]["cpu"], results[den]["cpu"]))
        ratio_rows.append([label, fmt_ratio(w), fmt_range(w), fmt_ratio(c), fmt_range(c), w.n])
    if ratio_rows:
        parts += ["", md_table(["per-round ratio", "wall, median [IQR]", "wall, min–max", "CPU time, median [IQR]",
                                "CPU time, min–max", "rounds"], ratio_rows)]
    if {"a", "a2", "c"} <= set(results) and len(results["a2"]["wall"]) == len(results["c"]["wall"]):
        parts += ["", verdict(results)]
    return "\n".join(parts)


def verdict(results: dict[str, Any]) -> str:
    """Is c/a distinguishable from the noise floor a'/a (wall time, then process CPU time)?"""
    lines = []
    for what in ("wall", "cpu"):
        floor = Spread.of(ratios(results["a2"][what], results["a"][what]))
        ca = Spread.of(ratios(results["c"][what], results["a"][what]))
        width = max(abs(floor.high - 1), abs(floor.low - 1))
        shift = ca.median - 1
        inside = abs(shift) <= width
        lines.append(
            f"{'Wall' if what == 'wall' else 'CPU'} time: c/a median {100 * shift:+.2f}% lies "
            f"{'inside' if inside else 'outside'} the noise floor (a'/a strays up to {100 * width:.2f}% from 1 over "
            f"{floor.n} rounds)" + (": no cost of the style is measurable at this resolution." if inside else ".")
        )
    return "\n".join(f"- {line}" for line in lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", required=True, choices=sorted(LABELS))
    parser.add_argument("--spec", required=True, help="RunSpec as JSON")
    args = parser.parse_args(argv)
    try:
        worker(args.worker, RunSpec.from_json(args.spec))
    except Exception as err:
        import traceback

        traceback.print_exc()
        reply("ERROR", {"error": f"{type(err).__name__}: {err}"})
        sys.exit(1)


if __name__ == "__main__":
    main()


def memory_table(results: dict[str, Any], device: str, budget_gib: float) -> str:
    """Per contestant the peak of each phase (the larger of a first image, which encodes the style, and the
    following ones) and of the whole image, and for the budget whether it held."""
    cuda = device.startswith("cuda")
    rows = []
    for name, res in results.items():
        if "error" in res:
            rows.append([LABELS[name], *(["-"] * (len(common.PHASES) + 2)), f"failed: {res['error']}"])
            continue
        runs = [res["first_phases"], *res["phases"]]
        by_phase = [max((run.get(p, 0) for run in runs), default=0) for p in common.PHASES]
        whole = max(by_phase)
        note = ""
        if name == "c-budget":
            held = whole <= budget_gib * GiB
            note = (f"{'under' if held else 'OVER'} the {budget_gib:g} GiB budget" if cuda
                    else "the budget bounds device memory; on the CPU every model is in RAM anyway")
        rows.append([LABELS[name], f"{res['load_peak'] / GiB:.2f}",
                     *(f"{b / GiB:.2f}" if b else "-" for b in by_phase), f"**{whole / GiB:.2f}**", note])
    what = "max_memory_allocated, GiB" if cuda else "peak RSS, GiB (memory-mapped weights counted when touched)"
    head = [f"contestant ({what})", "after loading", *(f"{p}" for p in common.PHASES), "whole image", "note"]
    return md_table(head, rows)
