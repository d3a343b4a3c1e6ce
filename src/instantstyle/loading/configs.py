"""A local model folder's configs, read safely before diffusers or transformers parse them.

diffusers and transformers trust a folder's JSON: a deeply nested or non-UTF-8 ``model_index.json``, a
5,000-digit integer, a list where an object belongs, ``"vae": ["os", "system"]`` (diffusers imports the
module it names) or zero attention heads ended in ``RecursionError``, ``ValueError``, ``AttributeError`` or
``ZeroDivisionError``; ``num_layers: 200000`` grew 3 GB while an empty skeleton was built. Here every config of
the folder is read as user input (``safe_json``, at most ``MAX_CONFIG_BYTES``, regular files only), each part
must come from diffusers or transformers, and the numbers that say how many modules to build are held to
``MAX_COUNT`` (real models stay far below it: SD3.5 Large has 38 layers of 38 heads, FLUX.1 38 single blocks)
before anything is built. Each problem is one line naming the file.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import UserError, shown
from ..files import safe_json
from ..files.textfiles import read_small_text

#: Configs are a few KB; this only stops a multi-gigabyte or endless file.
MAX_CONFIG_BYTES = 1 << 20
#: The JSON files of a part's folder that diffusers and transformers parse with ``json``.
CONFIG_FILES = ("config.json", "scheduler_config.json", "tokenizer_config.json", "preprocessor_config.json")
#: Config numbers that count modules (or heads dividing a width): each from 1 to ``MAX_COUNT``.
COUNT_KEYS = ("layers_per_block", "transformer_layers_per_block", "reverse_transformer_layers_per_block",
              "num_layers", "num_single_layers", "num_hidden_layers", "attention_head_dim", "num_attention_heads",
              "num_heads", "addition_embed_type_num_heads", "norm_num_groups")
MAX_COUNT = 256
MAX_LIST = 256  # entries of any list in a config (block types, channels, layer indices)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def read_config(path: Path, where: str) -> dict[str, Any]:
    """A JSON object from a config file, or a one-line ``UserError`` that starts with ``where``."""
    text = read_small_text(path, "", MAX_CONFIG_BYTES, name=where)
    try:
        data = safe_json.loads(text)
    except UserError as err:
        raise UserError(f"{where}: {err}") from None
    if not isinstance(data, dict):
        raise UserError(f"{where}: not a JSON object")
    return data


def check_model_folder(folder: Path, what: str = "model") -> None:
    """A diffusers folder's ``model_index.json`` and every part's configs, as this module says."""
    where = f"{what} {folder}"
    index = read_config(folder / "model_index.json", f"{where}: model_index.json")
    for name, value in index.items():
        if name.startswith("_") or not (folder / name).is_dir():
            continue  # a setting (force_zeros_for_empty_prompt), not a part
        if not (isinstance(value, list) and len(value) == 2 and all(v is None or isinstance(v, str) for v in value)):
            raise UserError(f"{where}: model_index.json: {name} must be [library, class] (e.g. [\"diffusers\", "
                            f"\"AutoencoderKL\"]), got {shown(value)}")
        library = value[0]
        if library is not None and not _is_model_library(library):
            raise UserError(f"{where}: model_index.json: {name} comes from {shown(library)}; a model's parts come "
                            "from diffusers or transformers")
        check_part_folder(folder / name, f"{where}: {name}/")


def check_part_folder(folder: Path, where: str) -> None:
    """The configs in one part's folder (a UNet, a text encoder, a ControlNet...): ``where`` + the file name."""
    for file in CONFIG_FILES:
        if (folder / file).exists():
            check_config_counts(read_config(folder / file, where + file), where + file)


def check_config_counts(config: dict[str, Any], where: str) -> None:
    """The numbers that size a model: each of ``COUNT_KEYS`` from 1 to ``MAX_COUNT``, no list over ``MAX_LIST``."""
    for key, value in config.items():
        if isinstance(value, list) and len(value) > MAX_LIST:
            raise UserError(f"{where}: {key} has {len(value):,} entries; the most is {MAX_LIST}")
        if key not in COUNT_KEYS:
            continue
        for item in _flat(value):
            if item is not None and (isinstance(item, bool) or not isinstance(item, int) or
                                     not 1 <= item <= MAX_COUNT):
                raise UserError(f"{where}: {key} {shown(item)} is not a count from 1 to {MAX_COUNT}")


def _flat(value: Any) -> Iterator[Any]:
    """The items of a number or of nested lists of them (``transformer_layers_per_block`` may be either)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        else:
            yield item


def _is_model_library(library: str) -> bool:
    """diffusers, transformers, or one of diffusers' pipeline packages (``"stable_diffusion"``, as SD1.5's safety
    checker names its own): found without importing anything it names."""
    if library in ("diffusers", "transformers"):
        return True
    return bool(_NAME.fullmatch(library)) and importlib.util.find_spec(f"diffusers.pipelines.{library}") is not None
