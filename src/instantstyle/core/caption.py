"""A prompt made from a picture: any transformers image-to-text model (BLIP, BLIP-2 as InstantStyle-Plus uses,
...) describing it, for users who do not want to write what their photo shows.

``caption(image, model_ref)`` loads the model once per reference, device and dtype (a folder or a hub id; offline,
an uncached hub id is one line naming the download) and decodes deterministically (beam search, the repetition
penalty of the InstantStyle-Plus script, no sampling), so the same photo always gets the same prompt.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError

if TYPE_CHECKING:
    import torch
    from PIL import Image

#: InstantStyle-Plus's captioner (its later ``infer_style.py``).
DEFAULT_CAPTION_MODEL = "Salesforce/blip2-flan-t5-xl"
MAX_CAPTION_TOKENS = 50


def check_caption_model(ref: str) -> None:
    """A reference that cannot be a model (a missing local folder) is a one-line error before anything loads."""
    from ..loading.hub import check_model_ref

    check_model_ref("caption model", ref)


@lru_cache(maxsize=2)
def load_captioner(ref: str, device: str = "cpu", dtype: torch.dtype | None = None) -> tuple[Any, Any]:
    """(processor, model) of an image-to-text model, on ``device`` (float32 unless ``dtype``); loaded once per
    reference."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ..loading.hub import hub_error

    check_caption_model(ref)
    try:
        processor = AutoProcessor.from_pretrained(ref)
        model = AutoModelForImageTextToText.from_pretrained(ref, dtype=dtype or torch.float32)
    except OSError as err:
        if Path(ref).expanduser().is_dir():
            raise UserError(f"caption model {ref}: not an image-to-text model ({str(err)[:120]})") from None
        raise hub_error("caption model", ref, err) from None
    except (ValueError, KeyError) as err:
        raise UserError(f"caption model {ref}: not an image-to-text model ({type(err).__name__})") from None
    return processor, model.to(device).eval()  # type: ignore[arg-type]


def caption(image: Image.Image, model_ref: str = DEFAULT_CAPTION_MODEL, device: torch.device | str = "cpu",
            dtype: torch.dtype | None = None, max_new_tokens: int = MAX_CAPTION_TOKENS) -> str:
    """What ``image`` shows, in the words of the image-to-text model ``model_ref`` (a folder or hub id), in float32
    unless ``dtype``."""
    import torch

    processor, model = load_captioner(model_ref, str(device), dtype)
    inputs = processor(images=image.convert("RGB"), return_tensors="pt").to(model.device)
    inputs = {k: v.to(model.dtype) if v.is_floating_point() else v for k, v in inputs.items()}
    with torch.no_grad():
        ids = model.generate(**inputs, num_beams=5, do_sample=False, repetition_penalty=1.5,
                             max_new_tokens=max_new_tokens)
    text = processor.batch_decode(ids, skip_special_tokens=True)[0].strip()
    if not text:
        raise UserError(f"caption model {model_ref} said nothing about the photo; give --prompt instead")
    return str(text)
