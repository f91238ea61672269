"""A llama-architecture GGUF with random weights, made on the spot: a model of a chosen size
for engine checks and throughput where a real one is too large to carry (the GPU check).

Its tokenizer and chat template are the bundled model's (SmolLM2's BPE vocabulary), so it
tokenizes, templates and decodes as a real model does; its replies are noise. Weights are
float16, drawn from a seeded normal distribution scaled down so activations stay finite.

`python -m bench.random_gguf OUT.gguf --hidden 2048 --layers 16` (about 0.5 B parameters,
1 GB); the defaults make a tiny one for tests.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from llmservice.providers.llamacpp.model_file import bundled_model_path
from llmservice.providers.llamacpp.settings import LlamaCppSettings


@dataclass(frozen=True)
class Shape:
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    ffn: int = 0  # 0: 8/3 of hidden, rounded up to a multiple of 64
    context: int = 4096

    @classmethod
    def sized(cls, hidden: int, layers: int, heads: int = 0) -> Shape:
        """A model `hidden` wide and `layers` deep, with `heads` (0: heads of 64) and a quarter
        as many KV heads (grouped-query attention, as today's small models have) from 4 on."""
        heads = heads or max(1, hidden // 64)
        return cls(hidden, layers, heads, max(1, heads // 4) if heads >= 4 else heads)

    @property
    def feed_forward(self) -> int:
        return self.ffn or -(-(8 * self.hidden // 3) // 64) * 64


def write(path: Path, shape: Shape, seed: int = 0) -> int:
    """Write the model to `path`; returns its parameter count."""
    source = gguf.GGUFReader(bundled_model_path(LlamaCppSettings().cache_dir))
    vocab = len(source.fields["tokenizer.ggml.tokens"].data)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(f"random llama {shape.hidden}x{shape.layers}")
    writer.add_context_length(shape.context)
    writer.add_embedding_length(shape.hidden)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.feed_forward)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_rope_dimension_count(shape.hidden // shape.heads)
    writer.add_rope_freq_base(100000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for key, field in source.fields.items():  # the bundled model's tokenizer and template
        if key.startswith("tokenizer."):
            kind = field.types[0]
            sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), kind, sub_type=sub)
    rng = np.random.default_rng(seed)
    count = 0

    def tensor(name: str, *dims: int, norm: bool = False) -> None:
        nonlocal count
        if norm:
            data = np.ones(dims, dtype=np.float32)
        else:
            data = (rng.standard_normal(dims, dtype=np.float32) * (0.5 / np.sqrt(dims[-1]))).astype(
                np.float16
            )
        count += data.size
        writer.add_tensor(name, data)

    head = shape.hidden // shape.heads
    tensor("token_embd.weight", vocab, shape.hidden)  # tied: the output layer reads it too
    tensor("output_norm.weight", shape.hidden, norm=True)
    for i in range(shape.layers):
        tensor(f"blk.{i}.attn_norm.weight", shape.hidden, norm=True)
        tensor(f"blk.{i}.attn_q.weight", shape.hidden, shape.hidden)
        tensor(f"blk.{i}.attn_k.weight", shape.kv_heads * head, shape.hidden)
        tensor(f"blk.{i}.attn_v.weight", shape.kv_heads * head, shape.hidden)
        tensor(f"blk.{i}.attn_output.weight", shape.hidden, shape.hidden)
        tensor(f"blk.{i}.ffn_norm.weight", shape.hidden, norm=True)
        tensor(f"blk.{i}.ffn_gate.weight", shape.feed_forward, shape.hidden)
        tensor(f"blk.{i}.ffn_up.weight", shape.feed_forward, shape.hidden)
        tensor(f"blk.{i}.ffn_down.weight", shape.hidden, shape.feed_forward)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--hidden", type=int, default=Shape.hidden)
    parser.add_argument("--layers", type=int, default=Shape.layers)
    parser.add_argument("--heads", type=int, default=0, help="0: hidden / 64")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n = write(args.out, Shape.sized(args.hidden, args.layers, args.heads), args.seed)
    print(f"{args.out}: {n / 1e6:.0f} M parameters, {args.out.stat().st_size / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
