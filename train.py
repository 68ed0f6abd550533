"""
Train a model on prompt -> answer examples, with one of four methods:

  causal      ordinary instruction tuning: the prompt is read left to right
  bitune      Bitune (Kopiczko et al., arXiv 2405.14862): the prompt is read twice, causally and
              bidirectionally, and the two K/V caches are mixed (bitune.py)
  bai         Bidirectional Awareness Induction (Hu et al., arXiv 2408.13959): an extra training
              loss on the prompt's hidden states (bai.py)
  bitune_bai  both: Bitune, plus the BAI loss on the states of one of its prompt passes

    python train.py                                   # Bitune on the toy task: minutes on a CPU
    python train.py --method=causal                   # the baseline, same budget
    python train.py config/lab_toy.py --seed=2        # a config file, then overrides
    python train.py config/dialogsum_gpt2.py --peft=dora --out_dir=out-dora-{method}
    python train.py --init_from=resume --out_dir=out  # continue a stopped run exactly
    python train.py --overwrite=True                  # start over in an out_dir that holds a run
    torchrun --standalone --nproc_per_node=4 train.py # the same run on 4 GPUs

Every setting is a plain global below; `--key=value` or a config file overrides it (configurator.py
checks names and types).
"""
from utils import runtime  # first: from here on, Ctrl-C while torch loads prints one line
if __name__ == '__main__':
    runtime.catch_signals("continue the run with --init_from=resume (from its last checkpoint)")

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
from configurator import check_train_config, configure, pick_device, pick_dtype
from data.tasks import check_fits, collate, task_from_config
from model import configure_optimizers, count_params
from utils import distributed, lock, rundir
from utils.rundir import StopTraining, check_finite
from utils.checkpoint import new_or_resumed, restore_state, save_run
from utils.evaluate import evaluate_task
from utils.plot import plot_run

# -----------------------------------------------------------------------------
# I/O
out_dir = 'out'          # may name settings in braces: 'out-{method}-s{seed}'
eval_interval = 250      # evaluate (val loss + task metric) and checkpoint every this many steps
eval_iters = 10          # val batches averaged for the val loss
eval_examples = 200      # val examples scored by generation (exact match / ROUGE)
eval_max_new_tokens = 0  # tokens generated per example at evaluation; 0 = the longest val answer
init_from = 'scratch'    # 'scratch' | 'resume' | 'gpt2'... | a GPT-2 folder | a base's ckpt.pt
overwrite = False        # a fresh run where a run is: False refuses, True deletes its log and ckpt
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
bitune_variant = 'full'  # 'full' | 'naive' | 'no_mixing' | 'only_causal' | 'shared' | 'fixed'
bitune_theta_init = 0.01
bai_lambda = 1.0         # weight of the awareness loss
bai_schedule = 'constant'  # 'constant' | 'linear' | 'exp' (see bai.py)
bai_eta = 1.0
bai_gamma = 0.5
bai_phi = 1000.0
bai_layer = -2           # pivots: -2 the block before the last (bai.py: why), -1 after ln_f, or 0..
bai_loss = 'mse'         # 'mse' | 'cosine' | 'ce'
bai_pivots = 'A'         # bitune_bai only: pivots from Bitune's bidirectional Pass 'A' or causal B
bai_detach_target = True
# model (ignored when init_from loads a model)
n_layer = 4
n_head = 4
n_embd = 128
block_size = 64
dropout = 0.0
bias = True
# parameter-efficient fine-tuning (adapters.py)
peft = 'none'            # 'none': train every weight | 'lora' | 'dora' | 'ia3': a frozen base
lora_r = 8               # lora_* are LoRA's and DoRA's settings; IA3 has no rank and fixed places
lora_alpha = 8           # (keys, values, MLP activation). scale = lora_alpha / lora_r
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
dtype = 'auto'           # 'auto' (see configurator.pick_dtype) | 'float32' | 'bfloat16' | 'float16'
compile = False          # torch.compile the blocks for training (GPUs; evaluation stays eager)
threads = 0              # torch CPU threads; 0 = torch's default (one per core). The count changes
                         # float rounding: compare runs made with the same count
seed = 1337
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in dict(globals()).items()
            if not k.startswith('_') and isinstance(v, (int, float, bool, str))}


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
    """lambda * Lambda(t), the weight of BAI's awareness loss at iteration it (0 for the others)."""
    if c.method not in ('bai', 'bitune_bai'):
        return 0.0
    return c.bai_lambda * bai.schedule(it, c.bai_schedule, eta=c.bai_eta, gamma=c.bai_gamma,
                                       phi=c.bai_phi, max_iters=c.max_iters)


def batch_loss(model, gpt, batch, c, bai_weight):
    """(loss to optimise, {numbers to log}) for one batch: each method's loss, here and in bench.py.
    'ce_loss' is always the answer tokens' cross-entropy, the number every method is compared on.
    gpt is the GPT inside model (BAI needs its embeddings); for 'causal' and 'bai' they are one."""
    if c.method == 'causal':
        loss = gpt.answer_loss(gpt.body(batch['idx']).x, batch['targets'])
        return loss, {'ce_loss': loss.item()}
    if c.method == 'bai':
        total, ce, aware = bai.compute_loss(gpt, batch, weight=bai_weight, layer=c.bai_layer,
                                            kind=c.bai_loss, detach_target=c.bai_detach_target)
        numbers = {'ce_loss': ce.item()}
        if aware is not None:  # None when the weight is 0: the step is then exactly causal's
            numbers['bai_loss'] = aware.item()
        return total, numbers
    if c.method == 'bitune':
        loss, _ = model(batch)  # Bitune: two prompt passes, the mix, the answer pass
        return loss, {'ce_loss': loss.item()}
    loss, aux = model(batch, hidden_layer=c.bai_layer)  # bitune_bai: also the pivot layer's states
    E = aux['bidir_hidden' if c.bai_pivots == 'A' else 'causal_hidden']  # read by Pass A or B
    aware = bai.awareness_from_pivots(E, aux['prefix_valid'], batch, gpt, kind=c.bai_loss,
                                      detach_target=c.bai_detach_target)
    return loss + bai_weight * aware, {'ce_loss': loss.item(), 'bai_loss': aware.item()}


def compile_blocks(gpt):
    """--compile: torch.compile each block of the transformer, in place, for any length of input
    (dynamic shapes), so the blocks of every method's passes run compiled while the rest of a step
    (embeddings, the loss, Bitune's mix) stays plain Python. Evaluation runs them eagerly."""
    for block in gpt.transformer.h:
        block.compile(dynamic=True)


@torch.no_grad()
def evaluate(model, gpt, task, c, dev, ctx, bai_weight):
    """Val loss over eval_iters batches (the same ones every time), then the task metric by
    generation, eagerly (generation's shapes change at every token: it would recompile at each)."""
    model.eval()
    val_set, meta = task['val'], task['meta']
    g = torch.Generator().manual_seed(0)
    losses = []
    with torch.compiler.set_stance('force_eager'):
        for _ in range(c.eval_iters):
            ids = torch.randint(len(val_set), (c.batch_size,), generator=g).tolist()
            batch = collate([val_set[i] for i in ids], dev, meta['pad'])
            with ctx:
                losses.append(batch_loss(model, gpt, batch, c, bai_weight)[1]['ce_loss'])
        scores, lines = evaluate_task(model, val_set[:c.eval_examples], meta, dev, c.batch_size,
                                      max_new_tokens=c.eval_max_new_tokens or None)
    model.train()
    return sum(losses) / len(losses), scores, lines


def log_evaluation(model, c, evaluation, done, lr, bai_weight, recent, tokens_per_s, elapsed,
                   setup=None):
    """Append one row to log.jsonl and print it. Train numbers: means over the steps since then.
    setup (the first row): what the run ran on, rundir.setup_of."""
    val_loss, scores, lines = evaluation
    row = {'iter': done, 'val_loss': val_loss, **scores, 'lr': lr, 'tokens_per_s': tokens_per_s,
           'elapsed_s': elapsed, **({'setup': setup} if setup else {})}
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
    rundir.append_row(c.out_dir, row)
    metric = ', '.join(f"{k} {v:.1f}" for k, v in scores.items() if not k.startswith('em_'))
    train_part = f"train {row['train_loss']:.4f}, " if 'train_loss' in row else ''
    tqdm.write(f"iter {done}: {train_part}val {val_loss:.4f}, {metric}")
    for line in lines:
        tqdm.write(f"    {line}")


def draw_micro_batches(train_set, c, data_rng, dev, pad, mine=slice(None)):
    """A step's micro-batches: batch_size examples drawn from data_rng for each, of which this
    process keeps its slice `mine` (under torchrun), collated."""
    picks = [torch.randint(len(train_set), (c.batch_size,), generator=data_rng)[mine].tolist()
             for _ in range(c.gradient_accumulation_steps)]
    return [collate([train_set[i] for i in ids], dev, pad) for ids in picks]


def apply_gradients(model, optimizer, scaler, c):
    """The optimizer step on the gradients forward_backward left: clipped to grad_clip (unscaled
    first under float16's GradScaler), then AdamW, then cleared."""
    if c.grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def forward_backward(train_step, gpt, micro, c, ctx, scaler, bai_weight, world):
    """One step's gradients from its micro-batches (gradient accumulation), each weighted by its
    share of the step's answer tokens, so the step's loss is a token-weighted mean whatever the
    split. Returns the step's loss, its logged numbers and its tokens, over every process."""
    n_answer = int(distributed.all_sum([sum(int(b['answer_len'].sum()) for b in micro)])[0])
    step_loss, logged, step_tokens = 0.0, {}, 0
    for i, batch in enumerate(micro):
        with distributed.no_sync(train_step, sync=i == len(micro) - 1):  # one all-reduce a step
            with ctx:
                loss, numbers = train_step(gpt, batch, c, bai_weight)
            share = int(batch['answer_len'].sum()) / n_answer
            # DDP averages the processes' gradients; times world turns that into their sum
            scaler.scale(loss * (share * world)).backward()
        step_loss += loss.item() * share
        for k, v in numbers.items():
            logged[k] = logged.get(k, 0.0) + v * share
        step_tokens += int(batch['valid'].sum())
    if world > 1:  # every process logs (and checks) the whole step's numbers, as one process would
        step_loss, *values, step_tokens = distributed.all_sum([step_loss, *logged.values(),
                                                               step_tokens])
        logged = dict(zip(logged, values))
    return step_loss, logged, step_tokens


def main(argv=None):
    # ---- settings
    c = SimpleNamespace(**configure(DEFAULTS, sys.argv[1:] if argv is None else argv))
    check_train_config(c, DEFAULTS)
    # one run at a time in out_dir (under torchrun, its first process holds it for all of them)
    with lock.held(c.out_dir, 'train.py') if os.environ.get('RANK', '0') == '0' else nullcontext():
        return run(c)


def run(c):
    """Setup and the training loop, in out_dir, which this process holds."""
    rundir.check_out_dir(c.out_dir, c.init_from, c.overwrite)  # before any process writes there

    # ---- setup: device, data, model, optimizer
    if c.threads > 0:
        torch.set_num_threads(c.threads)
    rank, world, dev = distributed.setup(pick_device(c.device))  # (0, 1, device) without torchrun
    if c.batch_size < world:  # each process takes a slice of every micro-batch
        raise ValueError(f"batch_size={c.batch_size} leaves some of the {world} processes without "
                         f"examples")
    device_type = 'cuda' if dev.startswith('cuda') else dev
    dtype = pick_dtype(c.dtype, dev)
    # autocast runs matmuls in bf16/fp16 while the weights and the optimizer stay in float32
    ctx = (nullcontext() if dtype == 'float32'
           else torch.autocast(device_type=device_type, dtype=getattr(torch, dtype)))
    scaler = torch.amp.GradScaler(device_type, enabled=dtype == 'float16')  # fp16: loss scaling
    task = task_from_config(vars(c))
    meta, train_set = task['meta'], task['train']
    torch.manual_seed(c.seed)
    model, gpt, run_cfg, ckpt = new_or_resumed(vars(c), meta)  # a new model, or a stopped run's
    check_fits(task, gpt.config.block_size)
    if c.method.startswith('bitune'):
        bitune.check_bidir_reaches_kv(run_cfg['bitune_variant'], gpt.config.n_layer,
                                      run_cfg['lora_targets'])
    model.to(dev)
    trainable, total = count_params(model)
    variant = f" ({c.bitune_variant})" if c.method.startswith('bitune') else ''
    print(f"method {c.method}{variant}, peft {c.peft}, {total / 1e6:.2f}M parameters, "
          f"{trainable:,} trainable; device {dev}, {dtype}")
    optimizer = configure_optimizers(model, c.weight_decay, c.learning_rate, (c.beta1, c.beta2),
                                     device_type, eps=c.adam_eps)
    data_rng = torch.Generator().manual_seed(c.seed)  # batches: never shifted by evaluation
    # a resumed run goes on with the optimizer and random states where it stopped
    iter_num = saved = restore_state(ckpt, optimizer, data_rng) if ckpt else 0  # saved: on disk
    if rank == 0:
        rundir.open_run(c.out_dir, iter_num if ckpt else None, c.overwrite)
    if rank > 0:  # its own dropout masks; a resumed run derives them from the iteration
        torch.manual_seed(c.seed + rank + world * iter_num)
    if c.compile:
        compile_blocks(gpt)
    # batch_loss(model, ...), through DDP under torchrun; Bitune leaves some parameters unused
    train_step = distributed.wrap(model, batch_loss, dev, c.method.startswith('bitune'))

    # ---- the training loop
    model.train()
    t_start, train_time, tokens_seen, recent = time.time(), 0.0, 0, []
    if iter_num == 0 and rank == 0:  # where training starts from: alpha = 0.5, an untrained model
        log_evaluation(model, c, evaluate(model, gpt, task, c, dev, ctx, 0.0), 0, 0.0, 0.0, recent,
                       0.0, time.time() - t_start, setup=rundir.setup_of(dev, dtype, torch))
    bar = tqdm(range(iter_num, c.max_iters), initial=iter_num, total=c.max_iters, desc=c.method,
               dynamic_ncols=True, mininterval=1.0, disable=rank > 0)
    for it in bar:
        t_step = time.time()
        lr = lr_at(it, c)
        for group in optimizer.param_groups:
            group['lr'] = lr
        bai_weight = bai_weight_at(it, c)
        # Every process draws the same batch_size examples (data_rng is seeded alike) and keeps its
        # own slice, so N processes see exactly the examples one process would.
        mine = slice(rank * c.batch_size // world, (rank + 1) * c.batch_size // world)
        micro = draw_micro_batches(train_set, c, data_rng, dev, meta['pad'], mine)
        step_loss, logged, step_tokens = forward_backward(train_step, gpt, micro, c, ctx, scaler,
                                                          bai_weight, world)
        tokens_seen += step_tokens
        check_finite("the loss", step_loss, it, c, saved, bar)
        apply_gradients(model, optimizer, scaler, c)
        recent.append(logged)
        train_time += time.time() - t_step
        bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.1e}", refresh=False)

        done = it + 1
        if done % c.eval_interval == 0 or done == c.max_iters:
            if rank == 0:
                evaluation = evaluate(model, gpt, task, c, dev, ctx, bai_weight)
                log_evaluation(model, c, evaluation, done, lr, bai_weight, recent,
                               tokens_seen / max(train_time, 1e-9), time.time() - t_start)
                check_finite("the val loss", evaluation[0], done, c, saved, bar, model)
                save_run(f"{c.out_dir}/ckpt.pt", model, gpt, optimizer, done, run_cfg, meta,
                         data_rng)
            saved = done
            distributed.barrier()  # the other processes wait while rank 0 evaluates and saves
    bar.close()
    distributed.teardown()
    if rank > 0:
        return None

    # ---- the end: pictures and a summary
    if c.compile:  # a handful of graphs, or a shape or Python value leaks into the compiled blocks
        from torch._dynamo.utils import counters
        print(f"torch.compile built {counters['stats']['unique_graphs']} graphs "
              f"({sum(counters['graph_break'].values())} graph breaks)")
    written = plot_run(c.out_dir)
    last = rundir.read_log(c.out_dir)[-1]
    summary = ', '.join(f"{k} {v:.1f}" for k, v in last.items() if k.startswith(('exact', 'rouge')))
    print(f"done: {c.method} on {meta['name']}, {last['iter']} iterations in "
          f"{time.time() - t_start:.0f}s; val loss {last['val_loss']:.4f}; {summary}")
    print(f"checkpoint {c.out_dir}/ckpt.pt; plots {', '.join(written)}")
    return last


if __name__ == '__main__':
    runtime.run_main(main, StopTraining)  # bad settings, data or files: one line `error: ...`
