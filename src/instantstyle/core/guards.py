"""Guards around a generation run: say when CLIP cuts a prompt short, and never pass off a NaN image as a result.

CLIP text towers read 77 tokens (75 words and pieces between start and end markers); diffusers drops the
rest with a log line the CLI keeps quiet, so :func:`warn_if_truncated` says it once per prompt. An
overflow anywhere in the run (float16 past 65504, extreme weights in a style file or LoRA) turns the
latents into NaN, which diffusers saves as an all-black image with no error: :func:`refuse_nonfinite`
watches the VAE decoder's output and raises instead.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ..errors import UserError
from .request import Request

logger = logging.getLogger("instantstyle")


def warn_if_truncated(tokenizer: Any, text: str, what: str = "prompt") -> None:
    """Warn (once per text) when ``tokenizer`` will cut ``text`` at its ``model_max_length`` tokens."""
    limit = getattr(tokenizer, "model_max_length", None)
    if not text or not isinstance(limit, int) or limit > 100_000:  # transformers' "no limit" is a huge int
        return
    tokens = tokenizer.tokenize(text)
    room = limit - 2  # the start and end markers
    if len(tokens) > room:
        ignored = tokenizer.decode(tokenizer.convert_tokens_to_ids(tokens[room:])).strip()
        shown = ignored if len(ignored) <= 60 else ignored[:57] + "..."
        _warn_once(f"warning: the {what} is {len(tokens)} tokens and CLIP reads {room}; ignored: {shown!r}")


def warn_if_prompts_truncated(pipe: Any, request: Request) -> None:
    """:func:`warn_if_truncated` for the prompt and negative prompt, with the diffusers pipeline's own tokenizer."""
    tokenizer = getattr(pipe, "tokenizer", None) or getattr(pipe, "tokenizer_2", None)
    if tokenizer is not None:
        warn_if_truncated(tokenizer, request.prompt, "prompt")
        warn_if_truncated(tokenizer, request.negative_prompt or "", "negative prompt")


@functools.lru_cache(maxsize=256)
def _warn_once(message: str) -> None:
    logger.warning(message)


@contextmanager
def refuse_nonfinite(vae: torch.nn.Module, why: str) -> Iterator[None]:
    """Run the block with the VAE decoder's output watched; if any of it was NaN or inf, raise a
    ``UserError`` afterwards (nothing is saved) ending with ``why``, the likely cause."""
    finite: list[torch.Tensor] = []
    decoder = getattr(vae, "decoder", vae)

    def watch(_module: Any, _args: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            finite.append(torch.isfinite(out).all())

    handle = decoder.register_forward_hook(watch)
    try:
        yield
    finally:
        handle.remove()
    if not all(bool(ok) for ok in finite):
        raise UserError(f"the model produced NaN/inf values, which would save as an all-black image, so nothing "
                        f"was written; likely cause: {why}")


def nonfinite_cause(dtype: torch.dtype, request: Request) -> str:
    """The likeliest reason a run of ``request`` in ``dtype`` overflowed, as advice."""
    if dtype == torch.float16:
        return "float16 overflow (try --dtype bfloat16 or float32, or lower scales)"
    return (f"extreme values: a style file, LoRA or adapter with extreme weights, or high scales "
            f"(scale {request.scale:g}, guidance {request.guidance:g})")
