"""Where the local model runs: its offload settings, checked against what this build can do.

llama.cpp offloads a model's layers to a GPU only when llama-cpp-python was built with a
GPU backend (`make install GPU=cuda`); a CPU-only build cannot, and a setting that asks
for offload there is a start-up error naming the setting and the build that honours it,
never a silent CPU fallback. `n_gpu_layers = -1` (the default) means every layer when
the build can offload and none when it cannot. The context settings (flash attention,
the KV cache's type, KV on the GPU) apply to the decode engine and the embedder alike.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import llama_cpp as llama

from llmservice.kernel.settings import SettingsError
from llmservice.providers.llamacpp.settings import LlamaCppSettings

ALL_LAYERS = 1 << 20  # llama.cpp takes any count above the model's layers as "all of them"
BUILD_HINT = "rebuild llama-cpp-python with a GPU backend: `make install GPU=cuda` (README, Set-up)"
_FLASH = {
    "auto": llama.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": llama.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": llama.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}
_KV_TYPES = {"f16": llama.GGML_TYPE_F16, "q8_0": llama.GGML_TYPE_Q8_0}
_GPU_KINDS = (1, 2)  # ggml_backend_dev_type: CPU 0, GPU 1, IGPU 2, ACCEL 3


@dataclass(frozen=True)
class Device:
    name: str  # e.g. "CPU", "CUDA0"
    description: str  # e.g. "NVIDIA H100 80GB HBM3"
    gpu: bool


@functools.cache
def devices() -> tuple[Device, ...]:
    """The backend devices of this build, as ggml lists them."""
    from llama_cpp._ggml import libggml as ggml  # llama-cpp-python's own handle on libggml

    llama.llama_backend_init()
    ggml.ggml_backend_dev_count.restype = ctypes.c_size_t
    ggml.ggml_backend_dev_get.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    for function in (ggml.ggml_backend_dev_name, ggml.ggml_backend_dev_description):
        function.restype, function.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
    ggml.ggml_backend_dev_type.restype, ggml.ggml_backend_dev_type.argtypes = ctypes.c_int, [ctypes.c_void_p]
    found = []
    for i in range(ggml.ggml_backend_dev_count()):
        dev = ggml.ggml_backend_dev_get(i)
        found.append(
            Device(
                (ggml.ggml_backend_dev_name(dev) or b"").decode(errors="replace"),
                (ggml.ggml_backend_dev_description(dev) or b"").decode(errors="replace"),
                ggml.ggml_backend_dev_type(dev) in _GPU_KINDS,
            )
        )
    return tuple(found)


def can_offload() -> bool:
    return bool(llama.llama_supports_gpu_offload())


@dataclass(frozen=True)
class Offload:
    """The offload settings as llama.cpp takes them, for one build."""

    n_gpu_layers: int
    main_gpu: int
    tensor_split: tuple[float, ...]
    flash_attn: str
    kv_cache_type: str
    offload_kqv: bool

    @classmethod
    def from_settings(cls, s: LlamaCppSettings, offloads: bool, gpus: int) -> Offload:
        """Raises SettingsError for what this build (`offloads`: it has a GPU backend) on this
        machine (`gpus` GPU devices) cannot honour."""
        if not offloads or not gpus:
            why = (
                "this llama-cpp-python build runs on the CPU only"
                if not offloads
                else "this build can offload but finds no GPU on this machine"
            )
            hint = BUILD_HINT if not offloads else "check the driver and that the GPU is visible here"
            asked = {
                "llamacpp.n_gpu_layers": s.n_gpu_layers > 0,
                "llamacpp.main_gpu": s.main_gpu > 0,
                "llamacpp.tensor_split": bool(s.tensor_split),
            }
            for key, wanted in asked.items():
                if wanted:
                    raise SettingsError(
                        f"{key} asks for GPU offload, but {why}; leave it unset "
                        f"(n_gpu_layers -1 or 0) or {hint}"
                    )
        elif s.main_gpu >= gpus:
            raise SettingsError(f"llamacpp.main_gpu = {s.main_gpu}, but this machine has {gpus} GPU(s)")
        if s.tensor_split and (len(s.tensor_split) > llama.llama_max_devices() or sum(s.tensor_split) <= 0):
            raise SettingsError(
                f"llamacpp.tensor_split: one share per GPU (at most {llama.llama_max_devices()}), "
                "not all zero"
            )
        if s.kv_cache_type != "f16" and s.flash_attn == "off":
            raise SettingsError(
                f"llamacpp.kv_cache_type = {s.kv_cache_type} needs flash attention: "
                "set llamacpp.flash_attn to auto or on"
            )
        layers = s.n_gpu_layers if s.n_gpu_layers >= 0 else ALL_LAYERS
        return cls(
            n_gpu_layers=layers if offloads and gpus else 0,
            main_gpu=s.main_gpu,
            tensor_split=tuple(s.tensor_split),
            flash_attn=s.flash_attn,
            kv_cache_type=s.kv_cache_type,
            offload_kqv=s.offload_kqv,
        )

    def model_params(self, params: Any) -> Any:
        """Set llama_model_params; returns what must stay alive while the model loads."""
        params.n_gpu_layers = self.n_gpu_layers
        params.main_gpu = self.main_gpu
        if not self.tensor_split:
            return None
        shares = (ctypes.c_float * llama.llama_max_devices())(*self.tensor_split)
        params.tensor_split = ctypes.cast(shares, ctypes.POINTER(ctypes.c_float))
        return shares

    def context_params(self, params: Any) -> None:
        """Set llama_context_params (the engine's and the embedder's)."""
        params.flash_attn_type = _FLASH[self.flash_attn]
        params.type_k = params.type_v = _KV_TYPES[self.kv_cache_type]
        params.offload_kqv = self.offload_kqv  # no effect where no layer is offloaded


ON_CPU = Offload(0, 0, (), "auto", "f16", True)  # what a build without offload runs with


@dataclass(frozen=True)
class Placement:
    """Where a loaded model runs: what the log, ListModels and /metrics say."""

    device: str  # "CPU", or the main GPU's name, e.g. "CUDA0"
    description: str
    layers_offloaded: int
    layers: int  # the model's repeating layers plus its output layer, as llama.cpp counts them

    def describe(self) -> str:
        if not self.layers_offloaded:
            return f"on the CPU ({self.description or 'no GPU offload'})"
        return f"{self.layers_offloaded}/{self.layers} layers on {self.device} ({self.description})"


NOT_LOADED = Placement("", "", 0, 0)


def placement(model_ptr: Any, offload: Offload, found: Sequence[Device]) -> Placement:
    layers = int(llama.llama_model_n_layer(model_ptr)) + 1
    gpus = [d for d in found if d.gpu]
    cpu = next((d for d in found if not d.gpu), Device("CPU", "", False))
    offloaded = min(offload.n_gpu_layers, layers) if gpus else 0
    if not offloaded:
        return Placement("CPU", cpu.description, 0, layers)
    main = gpus[min(offload.main_gpu, len(gpus) - 1)]
    return Placement(main.name, main.description, offloaded, layers)
