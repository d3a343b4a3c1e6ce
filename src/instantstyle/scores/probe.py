"""Find a model's style blocks: inject into each attention block alone, score the images, rank the blocks.

InstantStyle found by probing that SDXL's ``up_blocks.0.attentions.1`` carries style and
``down_blocks.2.attentions.1`` layout. The same probe on a fine-tuned model or another family tells
where its style lives: one image per (block, style, prompt) with the adapter only in that block at
scale 1, plus ``all`` blocks and ``none`` (the plain model, every block at scale 0) for reference.
Content subtraction is left out of the probed requests (it would hide what a block lets through);
the content prompt only measures the leak.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core.blocks import BlockInfo
from ..core.request import Request, StyleRef
from ..errors import UserError
from .pareto import Cell, style_key
from .scorer import Scorer, Scores, format_value, mean_scores, text_table

if TYPE_CHECKING:
    from PIL import Image

    from ..core.pipeline import StylePipeline

ALL = "all"
NONE = "none"


@dataclass(frozen=True)
class ProbeJob:
    """One probe image to make: the block it tests, its request, and the content prompt its leak is scored on."""

    block: str
    request: Request
    content_prompt: str | None = None


def probe_requests(
    base: Request,
    blocks: Sequence[BlockInfo],
    styles: Sequence[StyleRef | str] = (),
    prompts: Sequence[str] = (),
    content_prompts: Sequence[str | None] = (),
) -> list[ProbeJob]:
    """Every (block, style, prompt) request: each block alone at scale 1, then ``all`` and ``none``.
    ``styles`` default to the base request's references (each probed alone), ``prompts`` to its prompt;
    ``content_prompts`` are one per style, or one for all (default: the base's content prompt)."""
    if not blocks:
        raise UserError("this model has no attention blocks to probe")
    refs = [s if isinstance(s, StyleRef) else StyleRef.parse(s) for s in styles] or list(base.style)
    texts = list(prompts) or [base.prompt]
    contents = list(content_prompts) or [base.content_prompt]
    if len(contents) == 1:
        contents *= len(refs)
    if len(contents) != len(refs):
        raise UserError(f"{len(contents)} content prompts for {len(refs)} styles: give one per style, or one")
    plain = base.replace(content_prompt=None, content_image=None, num_images=1)
    settings = [(b.name, b.name, 1.0) for b in blocks] + [(ALL, ALL, 1.0), (NONE, ALL, 0.0)]
    return [
        ProbeJob(name, plain.replace(blocks=spec, scale=scale, style=(ref,), prompt=text), content)
        for name, spec, scale in settings
        for ref, content in zip(refs, contents, strict=True)
        for text in texts
    ]


def run_probe(
    pipe: StylePipeline,
    jobs: Sequence[ProbeJob],
    scorer: Scorer,
    batch_size: int = 4,
    on_image: Callable[[int, ProbeJob, Image.Image, Request, Scores], None] | None = None,
) -> list[tuple[ProbeJob, Scores]]:
    """Make and score every probe image: jobs that can share a denoising call go through the pipeline's batched
    generation (``generate_many``) ``batch_size`` at a time; each image is scored against its request, the leak
    against its job's content prompt. ``on_image`` sees each (job index, job, image, request, scores) as it is
    made, to save it at once. Returns (job, scores) in job order."""
    from ..core.plan import batch_key

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch size must be a whole number of at least 1, got {batch_size!r}")
    groups: dict[Any, list[int]] = {}
    for index, job in enumerate(jobs):
        groups.setdefault(batch_key(job.request), []).append(index)
    scored: dict[int, Scores] = {}
    for indices in groups.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            for index, result in zip(chunk, pipe.generate_many([jobs[i].request for i in chunk]), strict=True):
                job = jobs[index]
                scored[index] = scorer.score_request(result.images, result.request, job.content_prompt)[0]
                if on_image is not None:
                    on_image(index, job, result.images[0], result.request, scored[index])
    return [(job, scored[i]) for i, job in enumerate(jobs)]


@dataclass(frozen=True)
class ProbeRow:
    """A probed block's mean scores over its images; ``rank`` by style score among single blocks."""

    block: str
    layers: int
    scores: Scores
    count: int
    rank: int | None = None


def _known(value: float | None) -> float:
    """A score for sorting: a missing one sorts below every cosine."""
    return -2.0 if value is None else value


def rank_blocks(
    results: Sequence[tuple[ProbeJob, Scores]], blocks: Sequence[BlockInfo], style: str = "auto"
) -> tuple[list[ProbeRow], str]:
    """(rows, style score used): single blocks ranked by mean style score (ties: better prompt score),
    then unscored blocks, then ``all`` and ``none`` as reference rows. ``style="auto"`` is CSD when every
    image has it, else CLIP style."""
    by_block: dict[str, list[Scores]] = {}
    for job, scores in results:
        by_block.setdefault(job.block, []).append(scores)
    layers = {b.name: b.layers for b in blocks}
    layers[ALL] = sum(b.layers for b in blocks)
    layers[NONE] = 0
    rows = [ProbeRow(name, layers.get(name, 0), mean_scores(s), len(s)) for name, s in by_block.items()]
    key = style_key([Cell({}, s) for _, s in results]) if style == "auto" else style
    single = [r for r in rows if r.block not in (ALL, NONE)]
    scored = [r for r in single if r.scores.get(key) is not None]
    scored.sort(key=lambda r: (-_known(r.scores.get(key)), -_known(r.scores.clip_text)))
    ranked = [ProbeRow(r.block, r.layers, r.scores, r.count, n + 1) for n, r in enumerate(scored)]
    rest = [r for r in single if r.scores.get(key) is None]
    refs = [r for name in (ALL, NONE) for r in rows if r.block == name]
    return ranked + rest + refs, key


def probe_table(rows: Sequence[ProbeRow], style: str, markdown: bool = False) -> str:
    """The ranked table: rank, block, layers, style, prompt and leak scores, images per block."""
    header = ["rank", "block", "layers", style, "clip_text", "content_leak", "images"]
    body = [
        ["-" if r.rank is None else str(r.rank), r.block, str(r.layers), format_value(r.scores.get(style)),
         format_value(r.scores.clip_text), format_value(r.scores.content_leak), str(r.count)]
        for r in rows
    ]
    return text_table(header, body, markdown=markdown, left=(1,))


def probe_cells(rows: Sequence[ProbeRow]) -> list[Cell]:
    """The rows as plot/pick cells (settings: the blocks spec and scale each stands for)."""
    return [Cell({"blocks": ALL if r.block == NONE else r.block, "scale": 0.0 if r.block == NONE else 1.0},
                 r.scores, r.block) for r in rows]


def probe_presets(rows: Sequence[ProbeRow], top: int = 3) -> dict[str, str]:
    """Named presets from a ranking: ``style`` (the best block), ``style-top2``... ``style-top{top}``; and,
    when leaks were scored, ``layout`` (the other block letting most of the reference's content through,
    InstantStyle's layout block) and ``style+layout``."""
    ranked = sorted((r for r in rows if r.rank is not None), key=lambda r: r.rank or 0)
    if not ranked:
        raise UserError("no probed block has a style score: nothing to save as presets")
    presets = {"style": ranked[0].block}
    for k in range(2, min(top, len(ranked)) + 1):
        presets[f"style-top{k}"] = ",".join(r.block for r in ranked[:k])
    leaky = [r for r in ranked[1:] if r.scores.content_leak is not None]
    if leaky:
        layout = max(leaky, key=lambda r: _known(r.scores.content_leak)).block
        presets["layout"] = layout
        presets["style+layout"] = f"{ranked[0].block},{layout}"
    return presets
