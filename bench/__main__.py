"""`python -m bench`: every benchmark, then docs/benchmarks.md from all results."""

import sys

from . import decode_throughput, embeddings, engine_vs_llama_server, gateway_overhead, shim_vs_litellm

for bench in (decode_throughput, engine_vs_llama_server, gateway_overhead, shim_vs_litellm, embeddings):
    sys.argv = [bench.__name__]
    bench.main()
