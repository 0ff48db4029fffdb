"""Characters per second of text generation: cached, uncached, PyTorch.

  /work/benchvenv/bin/python benchmarks/lm_sampling_bench.py [--repeats=5]
  /work/benchvenv/bin/python benchmarks/lm_sampling_bench.py --no-torch
  /work/benchvenv/bin/python benchmarks/lm_sampling_bench.py --quick

The default LM of `configs/lm.py` (`lm_common.DEFAULT`: 4 blocks, width
128, context 128), untrained weights (the time of a step does not depend
on them), one text of `--length` characters after an 8-character prompt,
sampled at temperature 0.8, so the text and the prompt fit in the
context (where both of our paths give the same ids). Variants, timed in
one process, interleaved over `--repeats` rounds after a warm-up call
(tracing, compiling):

- `ours_cached`: `models.sampling.generate` as the `sample` command runs
  it: a key/value cache per block, one compiled loop;
- `ours_uncached`: the same with `use_cache=False` (the whole window
  again for every character, the path before the cache);
- `torch_cached`: the PyTorch twin of `lm_common.torch_lm` with our
  weights and a key/value cache of its own: the prompt in one forward
  pass, then one token at a time, `scaled_dot_product_attention` of the
  new query over the cached keys, under `torch.inference_mode`, eager
  (as the generate loops of PyTorch GPT examples are written).

Before timing, greedy generation of both frameworks is compared: the same
ids (float rounding may split a near tie; the count that match is
printed).
"""

import argparse
import json
import statistics
import time

import harness
import lm_common as common  # sets KERAS_BACKEND before Keras loads
import numpy as np

import models.sampling
from template_trainer.data.python_docs.builder import encode

PROMPT = "The list"
TEMPERATURE = 0.8


def torch_generate(torch, twin, prompt_ids, length, temperature, seed=0):
    """`length` ids continuing `prompt_ids` with the twin and a key/value
    cache (`temperature` 0: greedy). Positions stay within its context."""
    F = torch.nn.functional
    generator = torch.Generator().manual_seed(seed)
    heads = common.DEFAULT["num_heads"]
    width = twin.embedding.embedding_dim
    depth = width // heads

    def rotate(x, cos, sin):
        first, second = x.chunk(2, dim=-1)
        return torch.cat(
            [first * cos - second * sin, first * sin + second * cos], dim=-1
        )

    def forward(ids, cache, start):
        """Logits of the last position; appends keys/values to `cache`."""
        batch, n = ids.shape
        cos, sin = twin.cos[start : start + n], twin.sin[start : start + n]
        x = twin.embedding(ids)
        for i, block in enumerate(twin.blocks):
            qkv = block.attention.qkv(block.norm(x))
            q, k, v = qkv.view(batch, n, 3, heads, depth).unbind(2)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
            if cache[i] is not None:
                k = torch.cat([cache[i][0], k], dim=2)
                v = torch.cat([cache[i][1], v], dim=2)
            cache[i] = (k, v)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=n > 1)
            x = x + block.attention.out(
                o.transpose(1, 2).reshape(batch, n, width)
            )
            x = x + block.mlp_out(F.gelu(block.hidden(block.mlp_norm(x))))
        return twin.logits(twin.final_norm(x[:, -1]))

    with torch.inference_mode():
        cache = [None] * len(twin.blocks)
        ids = torch.tensor([list(prompt_ids)])
        logits = forward(ids, cache, 0)
        out = []
        for i in range(length):
            logits[:, 0] = -float("inf")  # padding is never drawn
            if temperature == 0:
                token = logits.argmax(-1, keepdim=True)
            else:
                probs = torch.softmax(logits / temperature, -1)
                token = torch.multinomial(probs, 1, generator=generator)
            out.append(int(token))
            if i + 1 < length:
                logits = forward(token, cache, len(prompt_ids) + i)
    return np.array(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--length", type=int, default=120)
    parser.add_argument("--quick", action="store_true", help="smoke run")
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.length = 2, 20
    torch = (
        None
        if args.no_torch
        else harness.require_torch("lm_sampling_bench", no_torch_flag=True)
    )
    prompt = encode(PROMPT)
    assert len(prompt) + args.length <= common.DEFAULT["context"]
    model = common.build_ours()
    model.context_length = common.DEFAULT["context"]

    def ours(use_cache, temperature=TEMPERATURE):
        return models.sampling.generate(
            model,
            prompt,
            args.length,
            temperature=temperature,
            use_cache=use_cache,
        )

    runs = {
        "ours_cached": lambda: ours(None),
        "ours_uncached": lambda: ours(False),
    }
    print(f"machine: {harness.machine()}")
    if torch is not None:
        torch.set_num_threads(2)
        twin = common.torch_lm(torch)
        common.copy_weights(torch, model, twin)
        mine = ours(None, temperature=0.0)
        theirs = torch_generate(torch, twin, prompt, args.length, 0.0)
        differ = np.flatnonzero(mine != theirs)
        print(
            f"greedy ids equal: {args.length - len(differ)} of "
            f"{args.length} (first difference at "
            f"{differ[0] if len(differ) else '-'})"
        )
        runs["torch_cached"] = lambda: torch_generate(
            torch, twin, prompt, args.length, TEMPERATURE
        )
    for run in runs.values():
        run()  # trace, compile
    seconds = {name: [] for name in runs}
    order = np.random.default_rng(0)
    for _ in range(args.repeats):
        for i in order.permutation(len(runs)):
            name = list(runs)[i]
            start = time.perf_counter()
            runs[name]()
            seconds[name].append(time.perf_counter() - start)
    rate = {
        name: args.length / statistics.median(s) for name, s in seconds.items()
    }
    ratios = {
        f"{a}/{b}": statistics.median(
            y / x for x, y in zip(seconds[a], seconds[b])
        )
        for a, b in (
            ("ours_cached", "ours_uncached"),
            ("ours_cached", "torch_cached"),
        )
        if a in seconds and b in seconds
    }
    print(f"{args.length} characters after {PROMPT!r}, {args.repeats} rounds")
    for name, r in rate.items():
        print(f"{name:16}{r:10.0f} characters/s")
    for name, r in ratios.items():
        print(f"speed {name:28}{r:6.2f}x")
    print(json.dumps({"chars_per_s": rate, "speed_ratios": ratios}))


if __name__ == "__main__":
    main()
