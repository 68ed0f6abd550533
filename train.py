"""
Train a model on prompt -> answer examples, with one of three methods:

  causal  ordinary instruction tuning: the prompt is read left to right
  bitune  Bitune (Kopiczko et al., arXiv 2405.14862): the prompt is read twice,
          causally and bidirectionally, and the two K/V caches are mixed (bitune.py)
  bai     Bidirectional Awareness Induction (Hu et al., arXiv 2408.13959): an extra
          training loss on the prompt's hidden states (bai.py)
  bitune_bai  both: Bitune, plus the BAI loss on the states of one of its prompt passes

    python train.py                                   # Bitune on the toy task, a few minutes on a CPU
    python train.py --method=causal                   # the baseline, same budget
    python train.py config/lab_toy.py --seed=2        # a config file, then overrides
    python train.py config/dialogsum_gpt2.py --peft=dora --out_dir=out-dora-{method}   # adapter kind: lora|dora|ia3
    python train.py --init_from=resume --out_dir=out  # continue a killed run exactly
    torchrun --standalone --nproc_per_node=4 train.py # the same run on 4 GPUs (utils/distributed.py)
    python train.py --overwrite=True                  # start over in an out_dir that already holds a run

Every setting is a plain global below; `--key=value` or a config file overrides
it (configurator.py checks names and types).
"""
from utils import runtime  # first, so Ctrl-C while the rest loads prints one line
if __name__ == '__main__':
    runtime.catch_signals("continue the run with --init_from=resume (from its last checkpoint)")

import json
import math
import os
import sys
import time
from contextlib import nullcontext
from types import SimpleNamespace

import torch
from tqdm import tqdm

import bai
import bitune

from utils import distributed
from utils.checkpoint import (build_model, check_out_dir, model_from_checkpoint, restore_state, resume_config,
                              save_run, start_fresh, trim_log)
from configurator import check_train_config, configure, pick_device
from utils.evaluate import evaluate_task
from utils.plot import plot_run
from model import configure_optimizers, count_params
from data.tasks import check_fits, collate, task_from_config

# -----------------------------------------------------------------------------
# I/O
out_dir = 'out'          # may name settings in braces: 'out-{method}-s{seed}'
eval_interval = 250      # evaluate (val loss + task metric) and checkpoint every this many iterations
eval_iters = 10          # val batches averaged for the val loss
eval_examples = 200      # val examples scored by generation (exact match / ROUGE)
eval_max_new_tokens = 0  # tokens generated per example at evaluation; 0 = the longest val answer
init_from = 'scratch'    # 'scratch' | 'resume' | 'gpt2'... | a GPT-2 directory | a base checkpoint .pt
overwrite = False        # a fresh run in an out_dir that holds a run: False refuses, True deletes its log and ckpt
# data
dataset = 'toy'          # 'toy' (generated) or a folder under data/ written by its prepare.py
data_dir = 'data'
toy_ops = 'CRSD'         # copy, reverse, sort, deduplicate
toy_min_len = 4          # data length range of the toy examples
toy_max_len = 12
toy_n_symbols = 10
toy_op_position = 'after'  # 'after' the data (bidirectional reading should matter) or 'before'
toy_n_train = 20000
toy_n_val = 500
toy_seed = 1337          # the dataset's seed; `seed` below is the training run's
# method
method = 'bitune'        # 'causal' | 'bitune' | 'bai' | 'bitune_bai'
bitune_variant = 'full'  # 'full' | 'naive' | 'no_mixing' | 'only_causal' | 'shared' | 'fixed' (see bitune.py)
bitune_theta_init = 0.01
bai_lambda = 1.0         # weight of the awareness loss
bai_schedule = 'constant'  # 'constant' | 'linear' | 'exp' (see bai.py)
bai_eta = 1.0
bai_gamma = 0.5
bai_phi = 1000.0
bai_layer = -2           # pivot layer: -2 = the block before the last (bai.py says why), -1 = after ln_f, or a block index
bai_loss = 'mse'         # 'mse' | 'cosine' | 'ce'
bai_pivots = 'A'         # bitune_bai only: pivots from Bitune's bidirectional Pass 'A' or its causal Pass 'B'
bai_detach_target = True
# model (ignored when init_from loads a model)
n_layer = 4
n_head = 4
n_embd = 128
block_size = 64
dropout = 0.0
bias = True
# parameter-efficient fine-tuning (adapters.py)
peft = 'none'            # 'none': train every weight | 'lora' | 'dora' | 'ia3': frozen base + adapters of that kind
lora_r = 8               # lora_* settings are LoRA's and DoRA's; IA3 has no rank and fixed places (keys,
lora_alpha = 8           # values, MLP activation). scale = lora_alpha / lora_r
lora_dropout = 0.0
lora_targets = 'c_attn,c_proj,c_fc'
# optimizer
learning_rate = 1e-3
max_iters = 1000         # the default run: a few minutes on a laptop CPU
batch_size = 64          # examples per micro-batch, shared out among the processes under torchrun
gradient_accumulation_steps = 1
weight_decay = 0.1       # base weights only; adapters and mixing scalars get none
beta1 = 0.9
beta2 = 0.99
adam_eps = 1e-8
grad_clip = 1.0          # 0 = off
warmup_iters = 100
decay = 'cosine'         # 'cosine' | 'linear' | 'constant' after warm-up
min_lr = 1e-4
# system
device = 'auto'          # 'auto' (cuda, then mps, then cpu) | 'cpu' | 'cuda' | 'cuda:1' | 'mps'
dtype = 'auto'           # 'auto' (bfloat16 where supported, else float32) | 'float32' | 'bfloat16' | 'float16'
compile = False          # torch.compile the training step (CUDA; slower start, faster steps; evaluation stays eager)
threads = 0              # torch CPU threads; 0 = torch's default (one per core), what labs/ ran with. The count
                         # changes float rounding (so not the default's numbers); on this 2-core CPU beside another
                         # 2-thread run, 1 thread was faster than 2 (50 iterations: 66 s vs 77 s, load average ~3)
seed = 1337
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in dict(globals()).items()
            if not k.startswith('_') and isinstance(v, (int, float, bool, str))}


class StopTraining(Exception):
    """The run cannot go on (e.g. the loss is no longer finite); the message says why and what to do."""


def not_finite(what, it, ckpt_path, saved):
    """Stop a run whose numbers are no longer finite, saying truthfully whether a good checkpoint exists."""
    kept = f"{ckpt_path} keeps the last finite model (iteration {saved})" if saved else "no checkpoint was written"
    return StopTraining(f"{what} at iteration {it}; {kept}. Try a lower learning_rate, grad_clip=1.0, "
                        f"or dtype='float32'.")


def lr_at(it, c):
    """Linear warm-up, then cosine or linear decay to min_lr at max_iters."""
    if it < c.warmup_iters:
        return c.learning_rate * (it + 1) / c.warmup_iters
    if c.decay == 'constant':
        return c.learning_rate
    progress = min(1.0, (it - c.warmup_iters) / max(1, c.max_iters - c.warmup_iters))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if c.decay == 'cosine' else 1 - progress
    return c.min_lr + shape * (c.learning_rate - c.min_lr)


def bai_weight_at(it, c):
    """lambda * Lambda(t), the weight of BAI's awareness loss at iteration it (0 for the other methods)."""
    if c.method not in ('bai', 'bitune_bai'):
        return 0.0
    return c.bai_lambda * bai.schedule(it, c.bai_schedule, eta=c.bai_eta, gamma=c.bai_gamma, phi=c.bai_phi,
                                       max_iters=c.max_iters)


def batch_loss(model, gpt, batch, c, bai_weight):
    """(loss to optimise, {numbers to log}) for one batch. 'ce_loss' is always the answer tokens'
    cross-entropy, the number every method is compared on. gpt is the GPT inside model (BAI needs its
    embeddings); with method 'causal' or 'bai' they are the same module."""
    if c.method == 'causal':
        loss = model(batch['idx'], batch['targets'], return_logits=False)[1]  # lm_head on answer positions only
        return loss, {'ce_loss': loss.item()}
    if c.method == 'bai':
        total, ce, aware = bai.compute_loss(model, batch, weight=bai_weight, layer=c.bai_layer, kind=c.bai_loss,
                                            detach_target=c.bai_detach_target)
        numbers = {'ce_loss': ce.item()}
        if aware is not None:  # None when the weight is 0: the step is then exactly the causal baseline
            numbers['bai_loss'] = aware.item()
        return total, numbers
    if c.method == 'bitune':
        loss, _ = model(batch)  # Bitune: two prompt passes, the mix, the answer pass
        return loss, {'ce_loss': loss.item()}
    loss, aux = model(batch, hidden_layer=c.bai_layer)  # bitune_bai: the same, and the pivot layer's states
    E = aux['bidir_hidden' if c.bai_pivots == 'A' else 'causal_hidden']  # the prefix, read by Pass A or B
    aware = bai.awareness_from_pivots(E, aux['prefix_valid'], batch, gpt, kind=c.bai_loss,
                                      detach_target=c.bai_detach_target)
    return loss + bai_weight * aware, {'ce_loss': loss.item(), 'bai_loss': aware.item()}


def bucketed(batch, block_size, bitune_=False):
    """--compile only: pad a right-padded training batch to the next power of two in width (at most
    block_size), and give Bitune its longest prompt and answer rounded up the same way, as Python ints
    ('prompt_width', 'answer_width'). torch.compile builds a graph for each shape it meets, and every
    batch has its own longest example; this way it meets a handful. The added columns are padding
    (masked keys, target -1), so the loss is the same up to float rounding; eager runs skip this and
    keep their exact numbers. bitune_: check here what Bitune.forward checks eagerly (a sync when compiled)."""
    if bitune_ and int(batch['prompt_len'].min()) < 2:
        raise ValueError("Bitune needs prompts of at least 2 tokens (the prefix is the prompt minus its last token)")
    up = lambda n: min(1 << (n - 1).bit_length(), block_size)  # 9 -> 16
    B, T = batch['idx'].shape
    W = up(T)
    extra = lambda t, fill: torch.cat([t, t.new_full((B, W - T), fill)], 1)
    return {**batch, 'idx': extra(batch['idx'], 0), 'targets': extra(batch['targets'], -1),
            'valid': extra(batch['valid'], False),
            'pos': torch.arange(W, device=batch['pos'].device).repeat(B, 1),
            'prompt_width': up(int(batch['prompt_len'].max())), 'answer_width': up(int(batch['answer_len'].max()))}


@torch.no_grad()
def evaluate(model, gpt, task, c, dev, ctx, bai_weight):
    """Val loss over eval_iters batches (the same ones every time), then the task metric by generation."""
    model.eval()
    val_set, meta = task['val'], task['meta']
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(c.eval_iters):
        ids = torch.randint(len(val_set), (c.batch_size,), generator=g).tolist()
        with ctx:
            losses.append(batch_loss(model, gpt, collate([val_set[i] for i in ids], dev, meta['pad']), c,
                                     bai_weight)[1]['ce_loss'])
    scores, lines = evaluate_task(model, val_set[:c.eval_examples], meta, dev, batch_size=c.batch_size,
                                  max_new_tokens=c.eval_max_new_tokens or None)
    model.train()
    return sum(losses) / len(losses), scores, lines


def log_evaluation(path, model, c, evaluation, done, lr, bai_weight, recent, tokens_per_s, elapsed):
    """Append one row to log.jsonl and print it. Train numbers are means over the steps since the last row."""
    val_loss, scores, lines = evaluation
    row = {'iter': done, 'val_loss': val_loss, **scores, 'lr': lr, 'tokens_per_s': tokens_per_s, 'elapsed_s': elapsed}
    if recent:  # the row at iteration 0 (before any training) has no train loss
        keys = {k for r in recent for k in r}
        means = {k: sum(r[k] for r in recent if k in r) / sum(k in r for r in recent) for k in keys}
        row['train_loss'] = means.pop('ce_loss')
        row.update(means)
    if c.method in ('bai', 'bitune_bai'):
        row['bai_weight'] = bai_weight
    if c.method.startswith('bitune'):
        row.update(model.alphas())
    recent.clear()
    with open(path, 'a') as f:
        f.write(json.dumps(row) + '\n')
    metric = ', '.join(f"{k} {v:.1f}" for k, v in scores.items() if not k.startswith('em_'))
    train_part = f"train {row['train_loss']:.4f}, " if 'train_loss' in row else ''
    tqdm.write(f"iter {done}: {train_part}val {val_loss:.4f}, {metric}")
    for line in lines:
        tqdm.write(f"    {line}")


def main(argv=None):
    # ---- settings and device
    c = SimpleNamespace(**configure(DEFAULTS, sys.argv[1:] if argv is None else argv))
    check_train_config(c, DEFAULTS)
    check_out_dir(c.out_dir, c.init_from, c.overwrite)  # before any process of a torchrun run writes there
    if c.threads > 0:
        torch.set_num_threads(c.threads)
    rank, world, dev = distributed.setup(pick_device(c.device))  # (0, 1, device) without torchrun
    if c.batch_size < world:  # each process takes a slice of every micro-batch (they may differ by one)
        raise ValueError(f"batch_size={c.batch_size} leaves some of the {world} processes without examples")
    device_type = 'cuda' if dev.startswith('cuda') else dev
    dtype = c.dtype
    if dtype == 'auto':
        dtype = 'bfloat16' if device_type == 'cuda' and torch.cuda.is_bf16_supported() else 'float32'
    ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype]
    # autocast runs matmuls in bf16/fp16 while the weights and the optimizer stay in float32
    ctx = nullcontext() if dtype == 'float32' else torch.autocast(device_type=device_type, dtype=ptdtype)
    scaler = torch.amp.GradScaler(device_type, enabled=(dtype == 'float16'))  # fp16 needs loss scaling; bf16 does not
    ckpt_path, log_path = os.path.join(c.out_dir, 'ckpt.pt'), os.path.join(c.out_dir, 'log.jsonl')

    # ---- data and model: new, or exactly where a killed run stopped
    task = task_from_config(vars(c))
    meta, train_set = task['meta'], task['train']
    torch.manual_seed(c.seed)
    ckpt = None
    if c.init_from == 'resume':
        model, gpt, ckpt = model_from_checkpoint(ckpt_path, 'cpu')
        run_cfg = resume_config(ckpt, vars(c), meta)
    else:
        model, gpt = build_model(vars(c), meta)
        run_cfg = dict(vars(c))
    check_fits(task, gpt.config.block_size)
    if c.method.startswith('bitune'):
        bitune.check_bidir_reaches_kv(run_cfg['bitune_variant'], gpt.config.n_layer, run_cfg['lora_targets'])
    model.to(dev)
    trainable, total = count_params(model)
    variant = f" ({c.bitune_variant})" if c.method.startswith('bitune') else ''
    print(f"method {c.method}{variant}, peft {c.peft}, "
          f"{total / 1e6:.2f}M parameters, {trainable:,} trainable; device {dev}, {dtype}")
    optimizer = configure_optimizers(model, c.weight_decay, c.learning_rate, (c.beta1, c.beta2), device_type,
                                     eps=c.adam_eps)
    data_rng = torch.Generator().manual_seed(c.seed)  # batches come from here, so evaluation never shifts them
    iter_num, saved = 0, None  # saved: the iteration of the last checkpoint on disk
    if ckpt is not None:
        iter_num = saved = restore_state(ckpt, optimizer, data_rng)
        if rank == 0:  # the one process that writes the log
            trim_log(log_path, iter_num)  # rows logged after this checkpoint will be logged again
        print(f"resumed from {ckpt_path} at iteration {iter_num}")
    elif c.overwrite and rank == 0:
        start_fresh(c.out_dir)  # check_out_dir refused an old run here unless overwrite=True
    if rank > 0:  # its own dropout masks; they are not saved, so a resumed run derives them from the iteration
        torch.manual_seed(c.seed + rank + world * iter_num)
    # --compile compiles the training step only: evaluation generates, and its shapes change at every token
    # (tests set NANOBIDIR_COMPILE_BACKEND=eager: dynamo still builds and counts graphs, without inductor's minutes)
    backend = os.environ.get('NANOBIDIR_COMPILE_BACKEND', 'inductor')
    fwd_model = torch.compile(model, backend=backend) if c.compile else model  # `model` saves (no _orig_mod.)
    # batch_loss(fwd_model, ...), through DDP under torchrun; Bitune leaves some parameters without gradients
    train_step = distributed.wrap(fwd_model, batch_loss, dev, unused_parameters=c.method.startswith('bitune'))

    # ---- the training loop
    model.train()
    t_start, train_time, tokens_seen, recent = time.time(), 0.0, 0, []
    if iter_num == 0 and rank == 0:  # where training starts from: alpha = 0.5, an untrained (or zero-shot) model
        log_evaluation(log_path, model, c, evaluate(model, gpt, task, c, dev, ctx, 0.0), 0, 0.0, 0.0, recent,
                       0.0, time.time() - t_start)
    bar = tqdm(range(iter_num, c.max_iters), initial=iter_num, total=c.max_iters, desc=c.method, dynamic_ncols=True,
               mininterval=1.0, disable=rank > 0)
    for it in bar:
        t_step = time.time()
        lr = lr_at(it, c)
        for group in optimizer.param_groups:
            group['lr'] = lr
        bai_weight = bai_weight_at(it, c)
        # every micro-batch first, so each can be weighted by its share of the step's answer tokens. Every
        # process draws the same batch_size examples (data_rng is seeded alike) and keeps its own slice, so
        # N processes see exactly the examples one process would.
        mine = slice(rank * c.batch_size // world, (rank + 1) * c.batch_size // world)
        picks = [torch.randint(len(train_set), (c.batch_size,), generator=data_rng)[mine].tolist()
                 for _ in range(c.gradient_accumulation_steps)]
        micro = [collate([train_set[i] for i in ids], dev, meta['pad']) for ids in picks]
        if c.compile:
            micro = [bucketed(b, gpt.config.block_size, c.method.startswith('bitune')) for b in micro]
        n_answer = int(distributed.all_sum([sum(int(b['answer_len'].sum()) for b in micro)])[0])  # all processes'
        step_loss, logged, step_tokens = 0.0, {}, 0
        for i, batch in enumerate(micro):
            with distributed.no_sync(train_step, sync=i == len(micro) - 1):  # one all-reduce per step
                with ctx:
                    loss, numbers = train_step(gpt, batch, c, bai_weight)
                share = int(batch['answer_len'].sum()) / n_answer  # token-weighted mean over the whole step
                # DDP averages the processes' gradients; times world turns that into their sum
                scaler.scale(loss * (share * world)).backward()
            step_loss += loss.item() * share
            for k, v in numbers.items():
                logged[k] = logged.get(k, 0.0) + v * share
            step_tokens += int(batch['valid'].sum())
        if world > 1:  # every process logs (and checks) the whole step's numbers, as one process would
            step_loss, *values, step_tokens = distributed.all_sum([step_loss, *logged.values(), step_tokens])
            logged = dict(zip(logged, values))
        tokens_seen += step_tokens
        if not math.isfinite(step_loss):
            bar.close()
            raise not_finite(f"the loss became {step_loss}", it, ckpt_path, saved)
        if c.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        recent.append(logged)
        train_time += time.time() - t_step
        bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.1e}", refresh=False)

        done = it + 1
        if done % c.eval_interval == 0 or done == c.max_iters:
            if rank == 0:
                evaluation = evaluate(model, gpt, task, c, dev, ctx, bai_weight)
                log_evaluation(log_path, model, c, evaluation, done, lr, bai_weight, recent,
                               tokens_seen / max(train_time, 1e-9), time.time() - t_start)
                if not (math.isfinite(evaluation[0]) and all(p.isfinite().all() for p in model.parameters())):
                    bar.close()  # a checkpoint is only ever written of a finite model
                    raise not_finite(f"the val loss ({evaluation[0]}) or the weights are no longer finite", done,
                                     ckpt_path, saved)
                save_run(ckpt_path, model, gpt, optimizer, done, run_cfg, meta, data_rng)
            saved = done
            distributed.barrier()  # the other processes wait while rank 0 evaluates and saves
    bar.close()
    distributed.teardown()
    if rank > 0:
        return None

    # ---- the end: pictures and a summary
    if c.compile:  # a handful of graphs, or some shape or Python value is leaking into the compiled step
        from torch._dynamo.utils import counters
        print(f"torch.compile built {counters['stats']['unique_graphs']} graphs "
              f"({sum(counters['graph_break'].values())} graph breaks)")
    written = plot_run(c.out_dir)
    with open(log_path) as f:
        last = json.loads(f.read().strip().splitlines()[-1])
    summary = ', '.join(f"{k} {last[k]:.1f}" for k in last if k == 'exact_match' or k.startswith('rouge'))
    print(f"done: {c.method} on {meta['name']}, {last['iter']} iterations in {time.time() - t_start:.0f}s; "
          f"val loss {last['val_loss']:.4f}; {summary}")
    print(f"checkpoint {ckpt_path}; plots {', '.join(written)}")
    return last


if __name__ == '__main__':
    runtime.run_main(main, StopTraining)  # bad settings, data or files: one line `error: ...` that says what to do
