"""`python -m tests.llama_cpp_server ARGS`: llama-cpp-python's OpenAI server, unchanged, with
weight repacking off (what llama-server's --no-repack does; its Python server has no such flag).

On CPUs with AMX, llama.cpp repacks Q4_1 weights for its AMX kernels, and a decode of more
than a few tokens then crashes the process (seen on the bundled SmolLM2 Q4_1). The service
turns repacking off for its own engine (llmservice/providers/llamacpp/model.py); this does the same for
the real third-party server the tests run.
"""

from __future__ import annotations

import runpy

import llama_cpp.llama_cpp as native

_default_params = native.llama_model_default_params


def _params_without_repacking() -> native.llama_model_params:
    params = _default_params()
    params.use_extra_bufts = False
    return params


native.llama_model_default_params = _params_without_repacking
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
