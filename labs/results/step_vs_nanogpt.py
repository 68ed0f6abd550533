"""
A training step of this project's GPT (no adapters) against nanoGPT's model.py, on the same weights
and batch.

    python labs/results/step_vs_nanogpt.py PATH/TO/nanoGPT/model.py [threads] [rounds]

nanoGPT is read from the path given (a clone of github.com/karpathy/nanoGPT); nothing of it is part
of this project. It is timed twice: as it is, and with GPT-2's tanh GELU in its MLP, the function
our model computes (nanoGPT uses the exact erf GELU, which torch computes faster on a CPU). A step
is forward, backward and AdamW. Each round times the three models back to back (in alternating
order), so a ratio within a round shares the machine's load; the medians and quartiles of those
ratios are printed.
Run it from the project root, on an otherwise idle machine. Results: step_vs_nanogpt.txt.
"""
import importlib.util
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.getcwd())
import model as ours  # noqa: E402  (this project's model.py: run from the project root)

SHAPES = {  # name: (n_layer, n_head, n_embd, T, B, vocab, steps per timing)
    'toy 4x128 T21 B64 V18': (4, 4, 128, 21, 64, 18, 3),
    'char 6x384 T256 B12 V65': (6, 6, 384, 256, 12, 65, 1),
    'gpt2-like 4x768 T256 B4 V50257': (4, 12, 768, 256, 4, 50257, 1)}


def main(path, threads=2, rounds=12):
    spec = importlib.util.spec_from_file_location('nanogpt', path)
    ng = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ng)
    torch.set_num_threads(threads)
    for name, (L, H, C, T, B, V, per) in SHAPES.items():
        torch.manual_seed(0)
        cfg = dict(n_layer=L, n_head=H, n_embd=C, block_size=max(T, 64), vocab_size=V, dropout=0.0,
                   bias=True)
        models = {'ours': ours.GPT(ours.GPTConfig(**cfg)), 'nanogpt': ng.GPT(ng.GPTConfig(**cfg)),
                  'nanogpt_tanh': ng.GPT(ng.GPTConfig(**cfg))}
        for block in models['nanogpt_tanh'].transformer.h:
            block.mlp.gelu = torch.nn.GELU(approximate='tanh')
        for k in ('nanogpt', 'nanogpt_tanh'):  # same weights (nanoGPT has no buffers we lack)
            models[k].load_state_dict(models['ours'].state_dict(), strict=False)
        x, y = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))
        steps = {}
        for k, m in models.items():
            opt = torch.optim.AdamW(m.parameters(), lr=1e-4)

            def step(m=m, opt=opt):
                m(x, y)[1].backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            steps[k] = step
            step(), step()  # warm-up
        ms, ratios = {k: [] for k in steps}, {k: [] for k in ('nanogpt', 'nanogpt_tanh')}
        for r in range(rounds):
            t = {}
            for k in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
                t0 = time.perf_counter()
                for _ in range(per):
                    steps[k]()
                t[k] = (time.perf_counter() - t0) / per
                ms[k].append(1e3 * t[k])
            for k in ratios:
                ratios[k].append(t['ours'] / t[k])
        quart = lambda v: statistics.quantiles(v, n=4)
        print(f"{name}, {threads} thread(s), {rounds} rounds: median step ms " +
              ', '.join(f"{k} {statistics.median(v):.1f}" for k, v in ms.items()) +
              "; ours / nanoGPT: " +
              ', '.join(f"vs {k} {statistics.median(v):.3f} "
                        f"(quartiles {quart(v)[0]:.3f}..{quart(v)[2]:.3f})"
                        for k, v in ratios.items()), flush=True)


if __name__ == '__main__':
    if len(sys.argv) < 2 or not os.path.isfile(sys.argv[1]):
        sys.exit("usage: python labs/results/step_vs_nanogpt.py PATH/TO/nanoGPT/model.py "
                 "[threads] [rounds]")
    main(sys.argv[1], *(int(a) for a in sys.argv[2:4]))
