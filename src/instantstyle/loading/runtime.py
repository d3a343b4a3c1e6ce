"""How to run (never what to make): device, precision, placement, memory and caching, in one dataclass.

Every surface builds a ``Runtime`` from its flags and hands it to the one loader
(``StylePipeline.from_pretrained``); batch workers, Ray actors included, get the same object. Nothing
here changes an image, so none of it is stored in a ``Request`` or a PNG. The model and adapter used
when a request names none are defined here, once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from ..files.images import MAX_PIXELS, check_pixel_cap

if TYPE_CHECKING:
    import torch

DEFAULT_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
DEFAULT_ADAPTER = "h94/IP-Adapter/sdxl_models/ip-adapter_sdxl.safetensors"
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "float16", "bfloat16")
DEVICE_MAPS = ("balanced",)
OFFLOAD_MODES = ("model", "sequential")
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")


@dataclass(frozen=True)
class Runtime:
    """How to run a pipeline.

    ``device_map="balanced"`` spreads a model over all GPUs of a machine; ``offload`` (``model`` or
    ``sequential``) moves models to the device only while they run; ``low_memory`` keeps the image encoder
    off the device between encodes (``None``: when memory is tight, or with offload); ``compile_backend``
    torch.compiles the denoiser; ``cache_dir`` keeps style embeddings on disk across runs;
    ``keep_all_weights`` keeps the adapter weights of layers no block targets (re-target without reloading);
    ``single_file_config`` gives the configs of a single-file model; ``max_pixels`` caps every image read
    (references, init, mask, control, regions, composition, content image), checked from its header;
    ``vae_tiling`` decodes in tiles (half the model's native size) and one image at a time at any size (default:
    in tiles above the native size);
    ``memory_budget`` (GiB of device memory) picks the placement that stays under it: the image encoder off the
    device between encodes, the text encoders on it only while they encode, only the targeted adapter layers,
    and a tiled decode only where a whole one would not fit (see ``memory.Budget``)."""

    device: str = "auto"
    dtype: str = "auto"
    device_map: str | None = None
    offload: str | None = None
    low_memory: bool | None = None
    compile_backend: str | None = None
    cache_dir: str | None = None
    keep_all_weights: bool = False
    single_file_config: str | None = None
    max_pixels: int = MAX_PIXELS
    vae_tiling: bool = False
    memory_budget: float | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Every value is one this project knows (no device is touched: a Ray driver checks for its workers)."""
        device = "cuda" if isinstance(self.device, str) and self.device.startswith("cuda:") else self.device
        for name, value, allowed in (
            ("device", device, DEVICES),
            ("dtype", self.dtype, DTYPES),
            ("device map", self.device_map, (None, *DEVICE_MAPS)),
            ("offload mode", self.offload, (None, *OFFLOAD_MODES)),
            ("compile backend", self.compile_backend, (None, *COMPILE_BACKENDS)),
        ):
            if value not in allowed:
                raise UserError(f"unknown {name} {value!r} ({', '.join(a for a in allowed if a)})")
        if self.device_map is not None and self.offload is not None:
            raise UserError("--device-map and --offload both decide where the model lives; choose one")
        check_pixel_cap(self.max_pixels)
        if self.memory_budget is not None:
            budget = self.memory_budget
            if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget < float("inf"):
                raise UserError(f"memory budget must be a positive number of GiB, not {budget!r}")
            for what, value in (("--device-map", self.device_map), ("--offload", self.offload)):
                if value is not None:
                    raise UserError(f"--memory-budget and {what} both decide where the models live; choose one")
            if self.low_memory is False:
                raise UserError("--memory-budget keeps the image encoder off the device; drop --no-low-memory")

    @property
    def keeps_all_weights(self) -> bool:
        """Adapter weights of untargeted layers stay loaded: asked for, and no memory budget (which keeps only the
        targeted layers; other blocks then reload the adapter)."""
        return self.keep_all_weights and self.memory_budget is None

    def replace(self, **changes: Any) -> Runtime:
        return dataclasses.replace(self, **changes)

    def placement(self) -> torch.device:
        """The main device on this machine (with a device map: the first GPU); a ``UserError`` when the device
        asked for is not available here."""
        if self.device_map is not None:
            import torch

            if not torch.cuda.is_available():
                raise UserError("--device-map balanced spreads a model over CUDA GPUs, and none is available")
            return resolve_device("cuda")
        return resolve_device(self.device)

    def torch_dtype(self, device: torch.device, gpu_half: str = "float16") -> torch.dtype:
        """The dtype asked for; ``auto`` is ``gpu_half`` (the model family's half precision) off the CPU."""
        return resolve_dtype(self.dtype, device, gpu_half)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; a device that is not available here is a ``UserError``."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device not in ("cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise UserError(f"unknown device {device!r} (auto, cpu, cuda, mps)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("device cuda asked for, but no CUDA GPU is available")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UserError("device mps asked for, but MPS is not available")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device, gpu_half: str = "float16") -> torch.dtype:
    """``auto`` is ``gpu_half`` (float16; bfloat16 for SD3.5 and FLUX) on a GPU and float32 on the CPU (CPU half
    precision is slow here)."""
    import torch

    if dtype == "auto":
        return torch.float32 if device.type == "cpu" else getattr(torch, gpu_half)  # type: ignore[no-any-return]
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r} ({', '.join(DTYPES)})")
    return getattr(torch, dtype)  # type: ignore[no-any-return]
