"""bench.gpu_check reads llama-batched-bench's table, the reference its figures sit beside."""

from __future__ import annotations

import pytest

from bench.gpu_check import batched_bench

pytestmark = pytest.mark.unit

OUTPUT = """
main: n_kv_max = 8192, n_batch = 2048, n_ubatch = 512, flash_attn = -1, is_pp_shared = 0, n_gpu_layers = 999

|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |
|-------|--------|------|--------|----------|----------|----------|----------|----------|----------|
|    32 |    128 |    1 |    160 |    0.010 |  3200.00 |    0.500 |   256.00 |    0.510 |   313.73 |
|    32 |    128 |    4 |    640 |    0.020 |  6400.00 |    0.800 |   640.00 |    0.820 |   780.49 |

llama_perf_context_print:        load time =     120.00 ms
"""


def test_the_decode_rate_by_streams_comes_from_its_table() -> None:
    assert batched_bench(OUTPUT) == {1: 256.0, 4: 640.0}


def test_output_without_the_table_gives_nothing() -> None:
    assert batched_bench("error: failed to load model") == {}
