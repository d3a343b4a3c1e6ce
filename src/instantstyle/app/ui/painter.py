"""The mask painters (inpainting, regions), held to the app's pixel cap and to one layer before gradio decodes."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.data_classes import FileData

from ...errors import UserError
from ...files.images import MAX_PIXELS, image_size
from .guard import PAINTED_LAYERS


def cap_mask_painter(editor: gr.ImageEditor, max_pixels: int | None = MAX_PIXELS) -> gr.ImageEditor:
    """gradio decodes an image editor's background, every layer and the composite before a handler runs: make this
    editor refuse, before that, an image over ``editor.max_pixels`` (read from its header; settable later, as
    ``build_app`` does) and more layers than the page paints. (Patched on the instance: a subclass of a gradio
    component makes gradio write a ``.pyi`` file beside this module.)"""
    preprocess, convert = editor.preprocess, editor.convert_and_format_image
    editor.max_pixels = max_pixels  # type: ignore[attr-defined]

    def checked_preprocess(payload: Any) -> Any:
        if payload is not None:
            sent = editor.blob_storage.get(payload.id) if payload.id is not None else payload
            if sent is not None and len(sent.layers or []) > PAINTED_LAYERS:
                raise gr.Error(f"mask painter: {len(sent.layers)} layers sent; the most is {PAINTED_LAYERS}",
                               duration=None, print_exception=False)
        return preprocess(payload)

    def checked_convert(file: Any, flatten_on_white: bool = False) -> Any:
        if file is not None:
            source = file.path if isinstance(file, FileData) else io.BytesIO(file)
            name = Path(file.orig_name or file.path).name if isinstance(file, FileData) else "(painted)"
            try:
                image_size(source, "mask painter image", editor.max_pixels, name=name)  # type: ignore[attr-defined]
            except UserError as err:
                raise gr.Error(str(err), duration=None, print_exception=False) from None
        return convert(file, flatten_on_white)

    setattr(editor, "preprocess", checked_preprocess)  # noqa: B010  (mypy: no assigning to a method)
    setattr(editor, "convert_and_format_image", checked_convert)  # noqa: B010
    return editor
