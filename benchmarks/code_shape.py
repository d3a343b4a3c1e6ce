#!/usr/bin/env python
"""The shape of the code one request walks through: stops and climbs of one CLI ``generate``, and sizes.

    python benchmarks/code_shape.py            # on the tiny SDXL fixture (built once under ~/.cache/instantstyle)
    python benchmarks/code_shape.py --edges    # also list every stop

A call tracer (``sys.setprofile``) watches one in-process ``instantstyle generate`` with content subtraction
(``--content-prompt``: InstantStyle's second step) on the tiny SDXL fixture (2 steps, 64 px, the fixtures already
built, the modules already imported) and counts, over instantstyle's own functions only:

- a **stop**: a distinct (caller function, callee function) pair where the callee lives in another instantstyle
  module than the caller. The caller is the nearest instantstyle frame up the stack, looking through the standard
  library (``contextlib``, ``functools``: a ``with`` over our own context manager counts as our call) but not
  through other libraries: what diffusers, torch or click call in our code (an attention processor, a hook, a
  step callback, the command function) is their call, not one of ours;
- a **climb back up**: a stop from a lower layer into a higher one, the layers ordered by folder,
  ``files < core < families < loading < modes < scores < app`` (``errors`` with ``files``; the package's
  ``__init__``/``__main__`` with ``app``); and, second, by design: the same, but the modules that assemble the
  layers below them, ``core.plan``, ``core.pipeline`` and ``core.preflight``, in a ``plan`` layer between ``modes``
  and ``scores`` (a request flows request -> plan -> families/method -> diffusers);
- **closures called from below**: the climbs whose callee is a lambda or nested function (``<locals>``): a
  higher layer handing a lower one a way to call back up into it;
- **module hops**: the distinct (caller module, callee module) pairs of the stops, and how many of them climb;
- the distinct instantstyle **functions** entered and the **modules** they live in;
- **repeats**: how many times the run asks the hub (``require_hub``), looks for the model's family
  (``family_of*``), runs a family's request check (``Family.check_request``) and resolves a blocks spec
  (``resolve_blocks``).

Then, read from the source (``ast``): ``StylePipeline``'s lines, methods and fields, and the 10 largest
functions of the package (lines from ``def`` to the last line of the body). Nothing is timed.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import sysconfig
import tempfile
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "instantstyle"
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))  # run from a clean clone, without installing

LAYERS = ("files", "core", "families", "loading", "modes", "scores", "app")
DESIGN = ("files", "core", "families", "loading", "modes", "plan", "scores", "app")
PLAN_LAYER = ("core.plan", "core.pipeline", "core.preflight")
STDLIB = sysconfig.get_paths()["stdlib"]


def module_of(filename: str) -> str | None:
    """``core.pipeline`` for a file of the package (``None`` outside it; the fixture builders are not counted)."""
    try:
        relative = Path(filename).resolve().relative_to(PACKAGE.resolve())
    except ValueError:
        return None
    name = ".".join(relative.with_suffix("").parts)
    return None if name.startswith("testing") else name


def layer_of(module: str, design: bool = False) -> int:
    """The module's layer: by folder, or (``design``) with the plan's modules in a layer of their own."""
    top = module.split(".")[0]
    top = "files" if top == "errors" else "app" if top in ("__init__", "__main__") else top
    if design:
        return DESIGN.index("plan" if module in PLAN_LAYER else top)
    return LAYERS.index(top)


class Tracer:
    """Collects the package's calls (see the module docstring for what counts)."""

    def __init__(self) -> None:
        self.functions: set[tuple[str, str]] = set()
        self.calls: Counter[tuple[str, str]] = Counter()
        self.stops: Counter[tuple[str, str, str, str]] = Counter()

    def caller(self, frame: FrameType | None) -> tuple[str, str] | None:
        """The nearest instantstyle frame up the stack, through the standard library only."""
        while frame is not None:
            filename = frame.f_code.co_filename
            module = module_of(filename)
            if module is not None:
                return module, frame.f_code.co_qualname
            if not (filename.startswith(STDLIB) and "site-packages" not in filename) and filename != "<string>":
                return None  # called by another library (diffusers, torch, click): its call, not ours
            frame = frame.f_back
        return None

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "call":
            return
        module = module_of(frame.f_code.co_filename)
        if module is None or frame.f_code.co_name == "<module>":
            return
        name = frame.f_code.co_qualname
        self.calls[(module, name)] += 1  # a generator's every resumption too (none of ``REPEATS`` is one)
        self.functions.add((module, name))
        source = self.caller(frame.f_back)
        if source is not None and source[0] != module:
            self.stops[(source[0], source[1], module, name)] += 1


#: What the run should do once, by the functions that do it (module, qualified name).
REPEATS = {
    "hub asked": (("loading.hub", "require_hub"),),
    "family looked for": (("families.__init__", "family_of"), ("families.__init__", "family_of_denoiser"),
                          ("families.__init__", "family_of_checkpoint")),
    "family's request check": (("families.unet", "check_request"), ("families.sd3", "check_request"),
                               ("families.flux", "check_request")),
    "blocks resolved": (("core.blocks", "resolve_blocks"),),
}


def repeats(tracer: Tracer) -> dict[str, int]:
    return {what: sum(tracer.calls[f] for f in functions) for what, functions in REPEATS.items()}


def trace_generate(out: Path) -> Tracer:
    """Trace one ``instantstyle generate`` on the tiny SDXL fixture (built and imported beforehand, untraced)."""
    from instantstyle.app.cli import entry
    from instantstyle.testing import tiny_models

    tiny = tiny_models()
    argv = ["generate", "--prompt", "a cat", "--style", str(tiny.style_image), "--content-prompt", "a dog",
            "--model", str(tiny.sdxl), "--adapter", str(tiny.sdxl_adapter), "--device", "cpu", "--steps", "2",
            "--width", "64", "--height", "64", "--seed", "7", "--overwrite"]
    try:  # a first run imports everything the command needs lazily: its imports are not the request's walk
        entry([*argv, "-o", str(out / "warm.png")])
    except SystemExit as exit_:
        assert not exit_.code, exit_.code
    tracer = Tracer()
    sys.setprofile(tracer)
    try:
        entry([*argv, "-o", str(out / "cat.png")])
    except SystemExit as exit_:
        assert not exit_.code, exit_.code
    finally:
        sys.setprofile(None)
    return tracer


def function_sizes() -> list[tuple[int, str]]:
    """(lines, module:qualname) of every function of the package but the fixture builders, largest first."""
    sizes = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_of(str(path))
        if module is None:
            continue
        tree = ast.parse(path.read_text())

        sizes += [(lines, f"{module}:{name}") for lines, name in _functions(tree, "")]
    return sorted(sizes, reverse=True)


def _functions(node: ast.AST, prefix: str) -> list[tuple[int, str]]:
    """(lines, qualified name) of every function under ``node``, nested ones included."""
    found = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = f"{prefix}{child.name}"
            found.append((child.end_lineno - child.lineno + 1, name))  # type: ignore[operator]
            found += _functions(child, f"{name}.")
        elif isinstance(child, ast.ClassDef):
            found += _functions(child, f"{prefix}{child.name}.")
    return found


def class_shape(name: str = "StylePipeline") -> tuple[str, int, int, int]:
    """(module, lines, methods, fields) of the class ``name`` in the package (fields: annotated class attributes,
    properties not counted as fields but as methods)."""
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name == name:
                methods = sum(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in node.body)
                fields = sum(isinstance(n, ast.AnnAssign) for n in node.body)
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                return str(module_of(str(path))), lines, methods, fields
    raise LookupError(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edges", action="store_true", help="list every stop (climbs marked ^)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tracer = trace_generate(Path(folder))
    climbs = {s for s in tracer.stops if layer_of(s[2]) > layer_of(s[0])}
    by_design = {s for s in tracer.stops if layer_of(s[2], True) > layer_of(s[0], True)}
    closures = {s for s in tracer.stops if "<locals>" in s[3] or "<lambda>" in s[3]}
    modules = {m for m, _ in tracer.functions}
    hops = {(a, b) for a, _, b, _ in tracer.stops}
    hops_up = {(a, b) for a, b in hops if layer_of(b) > layer_of(a)}
    module, lines, methods, fields = class_shape()
    print(f"one CLI generate (tiny SDXL, 2 steps, 64 px): {len(tracer.stops)} stops, {len(climbs)} climbs back up "
          f"({len(climbs & closures)} into closures), {len(tracer.functions)} functions in {len(modules)} modules; "
          f"{len(hops)} module hops, {len(hops_up)} of them up; by design: {len(by_design)} climbs back up "
          f"({len(by_design & closures)} into closures)")
    print(f"StylePipeline ({module}): {lines} lines, {methods} methods, {fields} fields")
    print("repeats: " + ", ".join(f"{what} {n}" for what, n in repeats(tracer).items()))
    print("largest functions:")
    for size, name in function_sizes()[:10]:
        print(f"  {size:4d}  {name}")
    if args.edges:
        print("stops (^: a climb back up by folder, !: by design):")
        for (a, fa, b, fb), count in sorted(tracer.stops.items()):
            mark = ("^" if (a, fa, b, fb) in climbs else " ") + ("!" if (a, fa, b, fb) in by_design else " ")
            print(f"  {mark} {a}:{fa} -> {b}:{fb}  x{count}")


if __name__ == "__main__":
    main()
