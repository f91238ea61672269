"""`python -m bench`: every benchmark, then docs/benchmarks.md from all results.

`python -m bench NAME... [FLAGS]` runs only those (by module name, e.g. prompt_cache),
each with FLAGS (e.g. `python -m bench prompt_cache --smoke`).
"""

import sys

from . import (
    agent_turn,
    decode_throughput,
    embeddings,
    engine_vs_llama_server,
    gateway_overhead,
    grpc_hop,
    hot_path,
    profile_hot_path,
    prompt_cache,
    rest_surfaces,
    shim_vs_litellm,
)

BENCHES = {
    bench.__name__.rsplit(".", 1)[-1]: bench
    for bench in (
        decode_throughput,
        engine_vs_llama_server,
        prompt_cache,
        agent_turn,
        gateway_overhead,
        grpc_hop,
        hot_path,
        profile_hot_path,
        shim_vs_litellm,
        rest_surfaces,
        embeddings,
    )
}

args = sys.argv[1:]
split = next((i for i, arg in enumerate(args) if arg.startswith("-")), len(args))
names, flags = args[:split], args[split:]
if unknown := [name for name in names if name not in BENCHES]:
    sys.exit(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
for bench in [BENCHES[name] for name in names] or list(BENCHES.values()):
    sys.argv = [bench.__name__, *flags]
    bench.main()
