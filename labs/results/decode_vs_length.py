"""
Why decoding slows down as the answer grows, even with the preallocated KV cache.

    python labs/results/decode_vs_length.py [threads]

GPT.generate, greedy, 16 prompts of 12 tokens, random weights, float32, in turns: ms per decoding
step at 32 and at 256 new tokens (the prefill subtracted), for the toy model and for GPT-2 124M's
shape. Each new token attends over every cached key, so a step at 256 reads more K/V than a step at
32: the script prints how many more bytes and the read rate that the extra time amounts to, next to
this machine's own rate of reading a large tensor. Results: decode_vs_length.txt.
"""
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.getcwd())
from model import GPT, GPTConfig  # noqa: E402  (run from the project root)

SHAPES = {'toy 4x128, vocab 18':
              (dict(n_layer=4, n_head=4, n_embd=128, vocab_size=18, block_size=300), 5),
          'GPT-2 124M shape 12x768, vocab 50257':
              (dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, block_size=1024), 2)}
B, P, LENGTHS = 16, 12, (32, 256)


def read_gb_per_s(mb=256):
    """This machine's rate of reading a tensor far bigger than its caches (GB/s)."""
    x = torch.ones(mb * 2**18)
    x.sum()
    t0 = time.perf_counter()
    for _ in range(5):
        x.sum()
    return 5 * x.numel() * 4 / (time.perf_counter() - t0) / 1e9


@torch.no_grad()
def main(threads=1):
    torch.set_num_threads(threads)
    print(f"{threads} thread(s); reading a 256 MB tensor: {read_gb_per_s():.1f} GB/s")
    for name, (cfg, rounds) in SHAPES.items():
        torch.manual_seed(0)
        model = GPT(GPTConfig(**cfg)).eval()
        idx, valid = torch.randint(1, cfg['vocab_size'], (B, P)), torch.ones(B, P, dtype=torch.bool)
        run = lambda n: model.generate(idx, n, temperature=0.0, valid=valid)
        run(4)  # warm-up
        step_s = {n: [] for n in LENGTHS}
        for _ in range(rounds):
            t = {}
            for n in (1,) + LENGTHS:  # one new token = the prefill alone
                t0 = time.perf_counter()
                run(n)
                t[n] = time.perf_counter() - t0
            for n in LENGTHS:  # n new tokens = the prefill's logits + n - 1 decoding steps
                step_s[n].append((t[n] - t[1]) / (n - 1))
        ms = {n: 1e3 * statistics.median(v) for n, v in step_s.items()}
        # a step attends over the prompt and the tokens so far: P + n/2 keys on average over
        # n tokens
        extra_keys = (LENGTHS[1] - LENGTHS[0]) / 2
        # K and V, every layer, float32
        kv_bytes = 2 * cfg['n_layer'] * B * cfg['n_embd'] * 4 * extra_keys
        extra_s = (ms[LENGTHS[1]] - ms[LENGTHS[0]]) / 1e3
        print(f"{name}: ms per step {ms[LENGTHS[0]]:.2f} at {LENGTHS[0]} new tokens, "
              f"{ms[LENGTHS[1]]:.2f} at {LENGTHS[1]}; tokens/s at {LENGTHS[1]} / at {LENGTHS[0]} "
              f"= {ms[LENGTHS[0]] / ms[LENGTHS[1]]:.2f}; a step at {LENGTHS[1]} reads "
              f"{kv_bytes / 1e6:.1f} MB more K/V in {1e3 * extra_s:.2f} ms more"
              + (f" ({kv_bytes / extra_s / 1e9:.1f} GB/s)" if extra_s > 0 else ""), flush=True)


if __name__ == '__main__':
    main(*(int(a) for a in sys.argv[1:2]))
