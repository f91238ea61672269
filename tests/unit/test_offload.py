"""Offload settings against what the build and the machine can do: refused, never ignored."""

from __future__ import annotations

import llama_cpp as llama
import pytest

from llmservice.kernel.settings import SettingsError
from llmservice.providers.llamacpp.offload import ALL_LAYERS, Offload, can_offload, devices
from llmservice.providers.llamacpp.settings import LlamaCppSettings

pytestmark = pytest.mark.unit


def settings(**values: object) -> LlamaCppSettings:
    return LlamaCppSettings(**values)  # type: ignore[arg-type]


def test_this_build_lists_its_devices_and_says_whether_it_offloads() -> None:
    found = devices()
    assert any(not d.gpu and d.name == "CPU" for d in found)
    assert can_offload() == bool(llama.llama_supports_gpu_offload())


def test_by_default_every_layer_goes_to_the_gpu_where_there_is_one_and_none_elsewhere() -> None:
    assert Offload.from_settings(settings(), offloads=True, gpus=1).n_gpu_layers == ALL_LAYERS
    assert Offload.from_settings(settings(), offloads=False, gpus=0).n_gpu_layers == 0
    assert Offload.from_settings(settings(), offloads=True, gpus=0).n_gpu_layers == 0
    assert Offload.from_settings(settings(n_gpu_layers=12), offloads=True, gpus=1).n_gpu_layers == 12
    assert Offload.from_settings(settings(n_gpu_layers=0), offloads=True, gpus=1).n_gpu_layers == 0


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"n_gpu_layers": 20}, "llamacpp.n_gpu_layers"),
        ({"main_gpu": 1}, "llamacpp.main_gpu"),
        ({"tensor_split": [1, 1]}, "llamacpp.tensor_split"),
    ],
)
def test_offload_asked_of_a_cpu_only_build_is_a_start_up_error_naming_the_setting_and_the_fix(
    values: dict[str, object], key: str
) -> None:
    with pytest.raises(SettingsError) as refused:
        Offload.from_settings(settings(**values), offloads=False, gpus=0)
    assert key in str(refused.value)
    assert "CPU only" in str(refused.value)
    assert "make install GPU=cuda" in str(refused.value)
    with pytest.raises(SettingsError, match="finds no GPU"):
        Offload.from_settings(settings(**values), offloads=True, gpus=0)


def test_settings_the_gpus_cannot_honour_are_refused() -> None:
    with pytest.raises(SettingsError, match="main_gpu = 2, but this machine has 2 GPU"):
        Offload.from_settings(settings(main_gpu=2), offloads=True, gpus=2)
    with pytest.raises(SettingsError, match="tensor_split: one share per GPU"):
        Offload.from_settings(settings(tensor_split=[0, 0]), offloads=True, gpus=2)
    with pytest.raises(SettingsError, match="q8_0 needs flash attention"):
        Offload.from_settings(settings(kv_cache_type="q8_0", flash_attn="off"), offloads=False, gpus=0)
    with pytest.raises(ValueError, match="flash_attn"):
        settings(flash_attn="sometimes")


def test_the_settings_reach_llama_cpps_parameters() -> None:
    wanted = settings(n_gpu_layers=7, main_gpu=1, tensor_split=[3, 1], flash_attn="on", kv_cache_type="q8_0")
    offload = Offload.from_settings(wanted, offloads=True, gpus=2)
    model = llama.llama_model_default_params()
    kept = offload.model_params(model)
    assert (model.n_gpu_layers, model.main_gpu) == (7, 1)
    assert [model.tensor_split[0], model.tensor_split[1]] == [3.0, 1.0]
    assert kept is not None  # the shares outlive the call: C reads them while the model loads
    context = llama.llama_context_default_params()
    offload.context_params(context)
    assert context.flash_attn_type == llama.LLAMA_FLASH_ATTN_TYPE_ENABLED
    assert context.type_k == context.type_v == llama.GGML_TYPE_Q8_0
    assert context.offload_kqv is True
    on_cpu = Offload.from_settings(settings(), offloads=False, gpus=0)
    on_cpu.context_params(context)
    assert context.type_k == llama.GGML_TYPE_F16
    assert context.flash_attn_type == llama.LLAMA_FLASH_ATTN_TYPE_AUTO  # llama.cpp's default, as before
