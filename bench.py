"""
Speed and memory of causal tuning, Bitune (arXiv 2405.14862) and BAI (arXiv 2408.13959) on this
machine.

    python bench.py                     # train.py's toy model; one to two minutes on a 2-core CPU
    python bench.py --model=gpt2-shape  # GPT-2 124M's shape, random weights (nothing is downloaded)
    # a GPU's whole table (989: an H100/H200 SXM's dense bfloat16 peak)
    python bench.py --model=gpt2-shape --dtype=bfloat16 --compile=True --peak_tflops=989 \
        --out=bench_gpu.json
    python bench.py --quick=True        # one or two calls of everything: for tests, not for numbers
    # training only, one process per GPU, through DDP
    torchrun --standalone --nproc_per_node=4 bench.py

One table per part, and every number in bench.json (--out):
  training   ms per optimizer step (forward + backward + AdamW, median of `iters` after
             `warmup`) and tokens/s, each method through train.py's own call (Bitune.forward,
             bai.compute_loss).
  generation prefill ms and decode tokens/s, greedy, no stop token: GPT.generate and
             Bitune.generate with the KV cache, and a loop without a cache that re-reads the
             whole sequence every step.
  inference  one forward of the training batch: no adapters, a LoRA adapter unmerged, and merged.
  targets    the project's speed goals, each printed PASS or MISS (goals, not assertions).
MFU (model FLOPs utilization, mfu_pct): the FLOPs the model needs for the tokens it handled, per
second, over the device's peak. Model FLOPs are counted as nanoGPT and PaLM count them: per token
2 per base weight forward, 4 more backward (2 with a frozen base: no weight gradients), and
attention's 4 * n_layer * n_embd per key of the sequence (x3 with backward); Bitune's step counts
the tokens of its three passes. Adapters' own few FLOPs are not counted. The peak is
--peak_tflops (the datasheet's dense number for the dtype), or where that is 0, the speed of a
large matmul timed here: a CPU has no datasheet number for torch's kernels.
Under torchrun only the training part runs (generation and inference do not change with the
number of processes): every process takes steps on its own batch_size examples, DDP sums the
gradients, and the table gives tokens/s per process and in total, so the total over one process's
is the speed-up.
Cases that are compared are timed in turns (A, B, C, A, B, C, ...), so when other jobs share the
machine a change of load slows all of them alike. Memory: on CUDA a case's parameters and optimizer
state plus its peak rise during a call; on a CPU the process's peak RSS so far, which is
process-wide and never goes down, so it says how big the largest case was, not each case's own
footprint.
"""
from utils import runtime  # first, so Ctrl-C while the rest loads prints one line
if __name__ == '__main__':
    runtime.catch_signals("run it again")

import json
import os
import resource
import statistics
import sys
import time
from contextlib import nullcontext, redirect_stdout
from io import StringIO
from types import SimpleNamespace

import torch

from utils import distributed
from utils.checkpoint import build_model
from bitune import tokens_read
from configurator import CORES, SEED, check_ranges, configure, pick_device, pick_dtype
from utils.rundir import setup_of
from utils.runtime import atomic_file
from adapters import KINDS, adapted_layers, add_adapters, set_adapter
from model import GPT, GPTConfig, configure_optimizers
from train import DEFAULTS as TRAIN, batch_loss, compile_blocks
from data.tasks import collate, collate_prompts

# -----------------------------------------------------------------------------
# model
model = 'toy'            # 'toy': the sizes below (train.py's defaults)
                         #   | 'gpt2-shape': GPT-2 124M's sizes
n_layer = 4
n_head = 4
n_embd = 128
vocab_size = 18          # the toy task's vocabulary
block_size = 64          # for training; generation gets room for the prompt + the longest output
# data: synthetic examples all of these lengths, so no padding blurs the token counts
prompt_len = 12          # toy prompts average 11 tokens (^ data op =), answers 8.4 (EOS included)
answer_len = 9
batch_size = 64
# what to run
peft = 'none,lora,dora,ia3'  # train under each: 'none' every weight
                             #   | 'lora', 'dora', 'ia3' frozen base + adapters
gen_peft = 'lora'        # generation decodes with the 'causal' adapter unmerged, as after
                         #   adapter training
gen_tokens = '32,128,256,512'  # new tokens per generation (clipped to the model's positions):
                               #   the decode curve
gen_batch_size = 16      # prompts per generation; the loop without a cache is slow, so fewer
                         #   than batch_size
warmup = 3               # untimed calls of each case first (allocator, caches, compilation)
iters = 10               # timed calls of each case (training steps, prefills; 3x for inference);
                         #   the median is reported
gen_iters = 5            # timed generations per length and method
quick = False            # warmup 1, iters 2, gen_iters 1, gen_tokens 4,8: checks that it runs
# system
device = 'auto'          # 'auto' (cuda, then mps, then cpu) | 'cpu' | 'cuda' | 'mps'
dtype = 'auto'           # 'auto' | 'float32' | 'bfloat16' | 'float16'
                         #   'auto' picks as train.py does (configurator.pick_dtype)
compile = False          # also time compiled training steps (and compiled inference forwards;
                         #   not generation); minutes on a CPU
threads = 1              # torch CPU threads: 1 keeps timings steady on a shared or small CPU;
                         #   0 = torch's default
peak_tflops = 0.0        # the device's peak TFLOP/s for MFU (datasheet, for dtype);
                         #   0 = time a large matmul here
out = 'bench.json'
seed = 1337
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in dict(globals()).items()
            if not k.startswith('_') and isinstance(v, (int, float, bool, str))}
GPT2_SHAPE = dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, block_size=1024)


def sync(dev):
    """GPU kernels run asynchronously: wait for them, or we would time only their launches."""
    if dev.startswith('cuda'):
        torch.cuda.synchronize()
    elif dev == 'mps':
        torch.mps.synchronize()


def interleaved(fns, dev, warmup, iters):
    """fns: name -> function. Times the cases in turns; returns each one's median seconds per call
    and, on CUDA, the most a call raised allocated memory above what was held before it (MB)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times, rise, cuda = {k: [] for k in fns}, {k: 0.0 for k in fns}, dev.startswith('cuda')
    for _ in range(iters):
        for k, fn in fns.items():
            sync(dev)
            if cuda:
                before = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            fn()
            sync(dev)
            times[k].append(time.perf_counter() - t0)
            if cuda:
                rise[k] = max(rise[k], (torch.cuda.max_memory_allocated() - before) / 2**20)
    return {k: statistics.median(v) for k, v in times.items()}, rise


def memory_mb(dev, rise, model, opt=None):
    """CUDA: parameters + AdamW's moments + the peak rise of a call. Elsewhere: the process's peak
    RSS so far (ru_maxrss is in KB on Linux, in bytes on macOS)."""
    if not dev.startswith('cuda'):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 2**20 if sys.platform == 'darwin' else rss / 2**10
    held = list(model.parameters()) + ([v for s in opt.state.values() for v in s.values()]
                                       if opt else [])
    return rise + sum(t.numel() * t.element_size() for t in held if torch.is_tensor(t)) / 2**20


def model_flops(c, tokens, keys, train, frozen=False):
    """Model FLOPs of `tokens` tokens that each attend over `keys` keys (see the docstring)."""
    L, C = c['n_layer'], c['n_embd']
    # every GPT-2 weight but wpe (a lookup)
    weights = L * (12 * C * C + 13 * C) + c['vocab_size'] * C + 2 * C
    per_weight = (4 if frozen else 6) if train else 2
    return tokens * (per_weight * weights + (3 if train else 1) * 4 * L * C * keys)


def matmul_tflops(dev, ctx, n):
    """TFLOP/s of an n x n matmul here, in the run's dtype (ctx): MFU's peak where no datasheet
    number is given."""
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    with ctx:
        t, _ = interleaved({'mm': lambda: a @ b}, dev, 2, 5)
    return 2 * n ** 3 / t['mm'] / 1e12


def examples(n, P, A, vocab, g):
    """n random prompt/answer pairs of exactly P and A tokens; the tokens do not affect speed."""
    rows = torch.randint(1, vocab, (n, P + A), generator=g).tolist()
    return [{'prompt': r[:P], 'answer': r[P:]} for r in rows]


def build(c, method, peft_, block):
    """The model train.py would build for this method (checkpoint.build_model), from the same
    seed."""
    torch.manual_seed(c['seed'])
    run = dict(init_from='scratch', block_size=block, n_layer=c['n_layer'], n_head=c['n_head'],
               n_embd=c['n_embd'], dropout=0.0, bias=True, method=method, peft=peft_, lora_r=8,
               lora_alpha=8, lora_dropout=0.0, lora_targets='c_attn,c_proj,c_fc',
               bitune_variant='full', bitune_theta_init=0.01)
    return build_model(run, {'vocab_size': c['vocab_size']}, c['dev'])[0]


def train_step(method, model, opt, batch, ctx, compile_, dev):
    """One optimizer step: train.py's loss call for the method (batch_loss, through DDP under
    torchrun), backward, its clipping, AdamW. --compile compiles the blocks as train.py does."""
    gpt = model.gpt if method == 'bitune' else model
    # train.py's settings; BAI's default pivots (the block before the last) need two blocks, so a
    # 1-block model takes them after ln_f, as train.py's --bai_layer=-1 would
    run = SimpleNamespace(**{**TRAIN, 'method': method,
                             'bai_layer': -2 if gpt.config.n_layer > 1 else -1})
    if compile_:
        compile_blocks(gpt)
    fwd = distributed.wrap(model, batch_loss, dev, unused_parameters=method == 'bitune')

    def step():
        with ctx:
            loss, _ = fwd(gpt, batch, run, 1.0)  # BAI: CE + 1.0 * L_BAI
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def bench_train(c, ctx, batch):
    """With --compile=True every case runs twice, eager and compiled ('+compile'), timed in turns,
    with the compiled one's first call (its compilation) in compile_s."""
    rows, (B, T), dev = [], batch['idx'].shape, c['dev']
    cases = ([(m, False) for m in ('causal', 'bitune', 'bai')]
             + [(m, True) for m in ('causal', 'bitune', 'bai') if c['compile']])
    for peft_ in c['peft'].split(','):
        names = [m + ('+compile' if comp else '') for m, comp in cases]
        models = {n: build(c, m, peft_, c['block_size']).train() for n, (m, _) in zip(names, cases)}
        with redirect_stdout(StringIO()):  # configure_optimizers prints parameter counts
            opts = {n: configure_optimizers(models[n], 0.1, 1e-4, (0.9, 0.99), dev.split(':')[0])
                    for n in models}
        steps = {n: train_step(m, models[n], opts[n], batch, ctx, comp, dev)
                 for n, (m, comp) in zip(names, cases)}
        # each step's first call: compiled, mostly its compilation
        first, _ = interleaved(steps, dev, 0, 1)
        t, rise = interleaved(steps, dev, c['warmup'], c['iters'])
        # Bitune's step reads (P - 1) + (P - 1) + A tokens per example where a causal step reads
        # T = P + A
        tokens = {n: B * T * (c['token_ratio'] if n.startswith('bitune') else 1) for n in names}
        flops = {n: model_flops(c, tokens[n], T, train=True, frozen=peft_ != 'none') for n in names}
        rows += [dict(method=n, peft=peft_, ms_per_step=1e3 * s, vs_causal=s / t['causal'],
                      tokens_per_s=B * T / s,
                      mfu_pct=100 * flops[n] / s / (c['peak_tflops'] * 1e12),
                      peak_mem_mb=memory_mb(dev, rise[n], models[n], opts[n]),
                      **({'compile_s': first[n] - s if n.endswith('+compile') else 0.0}
                         if c['compile'] else {}))
                 for n, s in t.items()]
    if distributed.launched():  # this process's tokens/s (rank 0's), and every process's added up
        totals = distributed.all_sum([r['tokens_per_s'] for r in rows])
        rows = [{**r, 'processes': c['processes'], 'total_tokens_per_s': total}
                for r, total in zip(rows, totals)]
    return rows


@torch.no_grad()
def decode_no_cache(gpt, idx, valid, n):
    """Greedy decoding that re-reads the whole sequence at every step, as a model without a KV
    cache must. Returns the seconds spent after each step, so one run serves every length."""
    pos = (valid.long().cumsum(1) - 1).clamp(min=0)  # as GPT.generate: left padding gets position 0
    one = torch.ones(idx.size(0), 1, dtype=torch.long, device=idx.device)
    t0, clock = time.perf_counter(), []
    for _ in range(n):
        tok = gpt(idx, pos=pos, valid=valid)[0][:, -1].argmax(-1, keepdim=True)  # (B, 1)
        idx, valid = torch.cat([idx, tok], 1), torch.cat([valid, one.bool()], 1)
        pos = torch.cat([pos, pos[:, -1:] + one], 1)
        sync(str(idx.device))
        clock.append(time.perf_counter() - t0)
    return clock


@torch.no_grad()
def bench_generate(c, ctx, idx, valid):
    (B, P), dev = idx.shape, c['dev']
    wanted = [int(n) for n in c['gen_tokens'].split(',')]
    block = c['block_size'] if c['model'] == 'gpt2-shape' else max(c['block_size'], P + max(wanted))
    lengths = sorted({max(1, min(n, block - P)) for n in wanted})
    models = {m: build(c, m, c['gen_peft'], block).eval() for m in ('causal', 'bitune')}
    causal, bitune = models['causal'], models['bitune']
    pos = (valid.long().cumsum(1) - 1).clamp(min=0)
    # decoding n tokens: each a forward over, on average, the prompt and half of the new tokens
    mfu = lambda n, s: (100 * model_flops(c, B * n, P + n / 2, train=False) / max(s, 1e-9)
                        / (c['peak_tflops'] * 1e12))
    rows = []
    with ctx:
        # the prompt alone: GPT.generate's first call; Bitune's Passes A, B, the mix and Pass C on
        # the last token
        pre, _ = interleaved(
            {'causal': lambda: causal.lm_head(causal.body(idx, pos, valid).x[:, -1]),
             'bitune': lambda: bitune.prefill(idx, pos, valid)}, dev, 1, c['iters'])
        for n in lengths:
            # warmup 0: the prefills warmed them up
            t, rise = interleaved(
                {m: (lambda m=m: models[m].generate(idx, n, temperature=0.0, valid=valid))
                 for m in models}, dev, 0, c['gen_iters'])
            # decoding = the whole generate() minus its prefill
            rows += [dict(method=m, new_tokens=n, prefill_ms=1e3 * pre[m],
                          decode_tokens_per_s=B * n / max(t[m] - pre[m], 1e-9),
                          mfu_pct=mfu(n, t[m] - pre[m]),
                          peak_mem_mb=memory_mb(dev, rise[m], models[m])) for m in models]
        # warm-up; then one run to the longest length serves all
        decode_no_cache(causal, idx, valid, 2)
        clock = []
        _, rise = interleaved(
            {'no_cache': lambda: clock.extend(decode_no_cache(causal, idx, valid, lengths[-1]))},
            dev, 0, 1)
        # its first step is the prefill; decoding is the rest, as for the cached rows
        rows += [dict(method='no_cache', new_tokens=n, prefill_ms=1e3 * clock[0],
                      decode_tokens_per_s=B * n / max(clock[n - 1] - clock[0], 1e-9),
                      mfu_pct=mfu(n, clock[n - 1] - clock[0]),
                      peak_mem_mb=memory_mb(dev, rise['no_cache'], causal)) for n in lengths]
    return rows


@torch.no_grad()
def bench_lora(c, ctx, batch):
    """The same weights three ways: no adapters, a LoRA adapter computed on the side, and merged
    into W."""
    conf = GPTConfig(**{k: c[k]
                        for k in ('n_layer', 'n_head', 'n_embd', 'vocab_size', 'block_size')})
    torch.manual_seed(c['seed'])
    models = {'plain': GPT(conf).to(c['dev']).eval()}
    for case in ('unmerged', 'merged'):
        m = add_adapters(GPT(conf), names=('causal',)).to(c['dev']).eval()
        m.load_state_dict(models['plain'].state_dict(), strict=False)
        for layer in adapted_layers(m):
            # B starts at 0; a trained adapter's is not
            torch.nn.init.normal_(layer.lora_B['causal'], std=0.02)
            if case == 'merged':
                layer.merge('causal')
        set_adapter(m, 'causal')
        models[case] = m
    fns = {k: (lambda f=(torch.compile(m) if c['compile'] else m): f(batch['idx']))
           for k, m in models.items()}
    with ctx:
        # 3 x iters: the three do the same work (but for the side path), so only many rounds
        # resolve a few %
        t, rise = interleaved(fns, c['dev'], c['warmup'], 3 * c['iters'])
    return [dict(case=k, ms=1e3 * s, tokens_per_s=batch['idx'].numel() / s,
                 peak_mem_mb=memory_mb(c['dev'], rise[k], models[k])) for k, s in t.items()]


def targets(train, gen, lora, ratio):
    """The project's speed goals: (name, measured value, goal, met?)."""
    goals = []
    for peft_ in dict.fromkeys(r['peft'] for r in train):
        rel = next(r['vs_causal'] for r in train if r['peft'] == peft_ and r['method'] == 'bitune')
        goals.append((f'Bitune training step / causal ({peft_})', rel, f'<= 1.15 x {ratio:.2f}',
                      rel <= 1.15 * ratio))
    n = max(r['new_tokens'] for r in gen)
    tps = {r['method']: r['decode_tokens_per_s'] for r in gen if r['new_tokens'] == n}
    goals.append((f'Bitune decode / causal decode, {n} tokens', tps['bitune'] / tps['causal'],
                  '>= 0.90', tps['bitune'] >= 0.9 * tps['causal']))
    first = min(r['new_tokens'] for r in gen)
    by_len = {r['new_tokens']: r['decode_tokens_per_s'] for r in gen if r['method'] == 'causal'}
    goals.append((f'causal decode at {n} tokens / at {first}', by_len[n] / by_len[first], '>= 0.90',
                  by_len[n] >= 0.9 * by_len[first]))
    goals.append((f'KV-cache decode / no-cache decode, {n} tokens', tps['causal'] / tps['no_cache'],
                  '>= 5', tps['causal'] >= 5 * tps['no_cache']))
    ms = {r['case']: r['ms'] for r in lora}
    goals.append(('LoRA merged forward time / plain', ms['merged'] / ms['plain'], '<= 1.05',
                  ms['merged'] <= 1.05 * ms['plain']))
    return [dict(name=a, value=v, goal=g, ok=ok) for a, v, g, ok in goals]


def table(title, rows):
    """Rows of dicts as aligned columns: big numbers without decimals, small ones with two."""
    cell = lambda v: (v if isinstance(v, str)
                      else f"{v:,.0f}" if isinstance(v, int) or v >= 100 else f"{v:.2f}")
    w = {k: max(len(k), *(len(cell(r[k])) for r in rows)) for k in rows[0]}
    print(f"\n{title}\n" + '  '.join(f"{k:>{w[k]}}" for k in w))
    for r in rows:
        print('  '.join(f"{cell(r[k]):>{w[k]}}" for k in w))


def check_writable(path):
    """Fail at start-up if --out cannot be written: its folder must exist and take a new file."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        why = 'is a folder' if os.path.isdir(path) else f'is in {folder}, which ' + (
            'is not writable' if os.path.isdir(folder) else 'does not exist')
        raise ValueError(f"out={path!r} {why}; pass --out=FILE.json in a folder you can write to")


def main(argv=None):
    c = configure(DEFAULTS, sys.argv[1:] if argv is None else argv)
    if c['model'] not in ('toy', 'gpt2-shape'):
        raise ValueError(f"model={c['model']!r}: choose 'toy' (sizes from n_layer, n_embd, ...) "
                         f"or 'gpt2-shape'")
    for key in GPT2_SHAPE if c['model'] == 'gpt2-shape' else ():  # the shape is the preset's
        if c[key] != DEFAULTS[key]:
            raise ValueError(f"{key}={c[key]!r}: --model=gpt2-shape sets {key} to "
                             f"{GPT2_SHAPE[key]!r}; leave one of the two out")
        c[key] = GPT2_SHAPE[key]
    quick = dict(warmup=1, iters=2, gen_iters=1, gen_tokens='4,8') if c['quick'] else {}
    c.update({k: v for k, v in quick.items() if c[k] == DEFAULTS[k]})  # what you set stays
    check_ranges(c, {'>= 1': 'n_layer n_head n_embd block_size batch_size gen_batch_size iters '
                             'gen_iters', '>= 2': 'vocab_size', '>= 0': 'warmup peak_tflops',
                     CORES: 'threads', SEED: 'seed'})
    if not all(n.strip().isdigit() and int(n) > 0 for n in c['gen_tokens'].split(',')):
        raise ValueError(f"gen_tokens={c['gen_tokens']!r}: positive token counts separated by "
                         f"commas, e.g. 32,128")
    if c['n_embd'] % c['n_head']:
        raise ValueError(f"n_embd={c['n_embd']} must be a multiple of n_head={c['n_head']}")
    P, A = c['prompt_len'], c['answer_len']
    if P < 2 or A < 1 or P + A > c['block_size']:
        raise ValueError(f"need prompt_len >= 2 (Bitune's prefix is the prompt minus one token), "
                         f"answer_len >= 1 and prompt_len + answer_len <= block_size "
                         f"({c['block_size']})")
    for key, value, allowed in [('peft', p, ('none',) + KINDS) for p in c['peft'].split(',')] + [
            ('gen_peft', c['gen_peft'], ('none',) + KINDS),
            ('dtype', c['dtype'], ('auto', 'float32', 'bfloat16', 'float16'))]:
        if value not in allowed:
            raise ValueError(f"{key}={value!r}: choose from {allowed}")
    check_writable(c['out'])  # now, not after minutes of benchmarking
    if c['threads'] > 0:
        torch.set_num_threads(c['threads'])
    # (0, 1, device) without torchrun
    rank, c['processes'], dev = distributed.setup(pick_device(c['device']))
    c['dev'] = dev
    dt = pick_dtype(c['dtype'], dev)
    # autocast runs the matmuls in bfloat16 while weights and optimizer stay float32, as in train.py
    ctx = (nullcontext() if dt == 'float32'
           else torch.autocast(dev.split(':')[0], dtype=getattr(torch, dt)))
    g = torch.Generator().manual_seed(c['seed'])
    batch = collate(examples(c['batch_size'], P, A, c['vocab_size'], g), dev)
    idx, valid = collate_prompts(examples(c['gen_batch_size'], P, A, c['vocab_size'], g), dev)
    cpu = setup_of('cpu', dt, torch)['processor']
    # the 1-minute load average
    load = lambda: round(os.getloadavg()[0], 2) if hasattr(os, 'getloadavg') else None
    machine = dict(device=dev, cpu=cpu,
                   gpu=torch.cuda.get_device_name() if dev.startswith('cuda') else None,
                   cores=os.cpu_count(), threads=torch.get_num_threads(), torch=torch.__version__,
                   dtype=dt, load_before=load(), peak_from='--peak_tflops')
    if c['peak_tflops'] <= 0:
        n = 256 if c['quick'] else 8192 if dev.startswith('cuda') else 2048
        c['peak_tflops'], machine['peak_from'] = (matmul_tflops(dev, ctx, n),
                                                  f'a {n}x{n} {dt} matmul timed here')
    print(f"{dev} ({machine['gpu'] or cpu}), threads={machine['threads']}, {dt}, "
          f"compile={c['compile']}; "
          f"model {c['model']} {c['n_layer']}x{c['n_embd']}, vocab {c['vocab_size']}; "
          f"load average {machine['load_before']} on {machine['cores']} cores; MFU's peak "
          f"{c['peak_tflops']:.3g} TFLOP/s ({machine['peak_from']})")
    if machine['load_before'] and machine['load_before'] > 0.5 * machine['cores']:
        print("warning: other jobs are using this machine: times are longer and noisier than on "
              "an idle one (and torch threads that outnumber the free cores wait on each other)")
    # token-forwards of a Bitune step over a causal one's (bitune.tokens_read counts them)
    ratio = c['token_ratio'] = tokens_read(P, A) / (P + A)
    t0 = time.time()
    train = bench_train(c, ctx, batch)
    per = ' per process' if distributed.launched() else ''
    table(f"training: batch {c['batch_size']}{per} x (prompt {P} + answer {A}), "
          f"one step = forward + backward + AdamW; "
          f"Bitune's token-count ratio {ratio:.2f}", train)
    if distributed.launched():  # under torchrun: the training part only
        distributed.teardown()
        result = dict(machine=machine, config=c, token_ratio=ratio, train=train)
        if rank == 0:
            with atomic_file(c['out']) as f:
                json.dump(result, f, indent=1)
        print(f"{time.time() - t0:.0f}s; wrote {c['out']}")
        return result
    gen = bench_generate(c, ctx, idx, valid)
    table(f"generation: {c['gen_batch_size']} prompts of {P} tokens, greedy; "
          f"peft {c['gen_peft']}", gen)
    lora = bench_lora(c, ctx, batch)
    table("inference: one forward of the training batch", lora)
    goals = targets(train, gen, lora, ratio)
    print("\ntargets (goals, not assertions)")
    for t in goals:
        print(f"  {'PASS' if t['ok'] else 'MISS'}  {t['name']}: {t['value']:.2f} "
              f"(goal {t['goal']})")
    machine['load_after'] = load()
    print(f"{time.time() - t0:.0f}s; load average at the end {machine['load_after']}")
    result = dict(machine=machine, config=c, token_ratio=ratio, train=train, generate=gen,
                  lora=lora, targets=goals)
    with atomic_file(c['out']) as f:
        json.dump(result, f, indent=1)
    print(f"wrote {c['out']}")
    return result


if __name__ == '__main__':
    runtime.run_main(main)  # bad settings: one line `error: ...` that says what to change
