"""The on-disk style embedding cache: a style image seen once is never encoded again.

Keys are the image's content hash, the encoder's fingerprint (its folder and the size and mtime of
its files, so replaced weights miss) and the adapter kind; values are small ``.safetensors`` files
named by the key's hash, written atomically. A damaged entry is a miss, never an error.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from ..files.atomic import atomic_path, remove_stale_temps, writable_folder

#: A cache folder may be shared by running processes: only temporary files this old are left by a dead writer.
STALE_TEMP_S = 600.0


def encoder_fingerprint(identity: str) -> str:
    """The encoder's identity plus, for a folder, the names, sizes and mtimes of its files."""
    folder = Path(identity)
    if not folder.is_dir():
        return identity
    files = sorted(p for p in folder.iterdir() if p.is_file())
    stamps = ",".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    return f"{folder.resolve()}|{stamps}"


@dataclass(frozen=True)
class EmbeddingCache:
    """A folder of cached embeddings, one file per (image, encoder, kind)."""

    folder: Path

    @classmethod
    def open(cls, folder: str | Path) -> EmbeddingCache:
        """Create the folder if needed; an unusable folder is a ``UserError``."""
        path = writable_folder(folder, f"cache folder {folder}")
        remove_stale_temps(path, older_than_s=STALE_TEMP_S)
        return cls(path)

    def path_for(self, key: Sequence[str]) -> Path:
        digest = hashlib.sha256("\0".join(key).encode()).hexdigest()
        return self.folder / f"{digest}.safetensors"

    def get(self, key: Sequence[str]) -> torch.Tensor | None:
        """The cached embedding, or ``None`` (absent or unreadable)."""
        from safetensors.torch import load_file

        path = self.path_for(key)
        if not path.is_file():
            return None
        try:
            return load_file(str(path))["embeds"]
        except Exception:  # a truncated or foreign file: recompute and overwrite it
            return None

    def put(self, key: Sequence[str], embeds: torch.Tensor) -> None:
        """Store an embedding (atomically: a crash leaves no half-written entry)."""
        from safetensors.torch import save_file

        try:
            with atomic_path(self.path_for(key)) as tmp:
                save_file({"embeds": embeds.detach().contiguous().cpu()}, str(tmp))
        except UserError:
            pass  # a full or read-only disk only costs the next run an encode
