"""
A machine check for a class: `python labs/labs.py --lab=methods --arms=causal,bitune --seeds=14
--jobs=2 --check` runs no lab. It prints a few lines a student reads aloud to the teacher:

- torch's version (and whether it is in requirements.txt's range), the device train.py would pick,
  the dtype the runs use, and the code hash (labs/shares.py: the hash of the method code every
  share carries; all shares of a class must show the same one). If the teacher wrote labs/class.json
  before class, {"code": "<hash, or its first digits>", "torch": "<version prefix, e.g. 2.13>"},
  each is compared with it: match or MISMATCH.
- a few seconds of each arm's training on this machine, built as train.py builds it (its data,
  model, optimizer, batches and step, with the torch threads the share's runs will get:
  cores // jobs, as runner.run_all gives them), and one evaluation batch.
- the prediction: per run, iterations x seconds per step + evaluations (the one at iteration 0 and
  each eval_interval) x seconds per evaluation; the runs then go `jobs` at a time, longest first,
  each onto the first slot to come free, stage by stage, as run_all starts them (schedule). It
  assumes the machine is otherwise idle, and leaves out each run's start-up, checkpoints and plots
  (a few seconds a run).

    info = check(opts, runs)   # opts, runs: as labs.main has them after read_options() and plan()
"""
import heapq
import io
import math
import os
import re
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext, redirect_stdout
from types import SimpleNamespace

import torch

import bitune
from configurator import check_train_config, pick_device, pick_dtype
from data.tasks import check_fits, collate, task_from_config
from labs import shares
from labs.runner import ROOT, finished, load_json
from model import configure_optimizers
from train import (DEFAULTS, apply_gradients, bai_weight_at, batch_loss, compile_blocks,
                   draw_micro_batches, forward_backward, lr_at)
from utils import distributed
from utils.checkpoint import build_model
from utils.evaluate import evaluate_task
from utils.rundir import setup_of

CLASS_FILE = os.path.join(ROOT, 'labs', 'class.json')
CLASS_FIX = ('write it as {"code": "<the code hash the teacher\'s check prints>", "torch": "2.13"} '
             '(either key may be left out), or delete it')
SAME_CODE = ("every share of the class must show the same code hash: the teacher compares it with "
             "theirs; a different one is another version of the code (`git pull`, or download it "
             "again)")


# ---- versions and the class's file

def release(version):
    """'2.13.0+cpu' -> (2, 13, 0): a version's release numbers, without its local or pre-release
    part; () if it starts with none."""
    m = re.match(r'\d+(\.\d+)*', str(version).strip())
    return tuple(int(x) for x in m.group().split('.')) if m else ()


def satisfies(version, spec):
    """Whether version meets every clause of a pip range such as '>=2.1,<3' or '==2.13.*' (None
    when a clause is not one of these: >=, >, <=, <, ==, !=, with .* after == and !=)."""
    have = release(version)
    for clause in spec.split(','):
        m = re.fullmatch(r'\s*(>=|<=|==|!=|<|>)\s*(\d+(?:\.\d+)*)(\.\*)?\s*', clause)
        if not m or (m.group(3) and m.group(1) not in ('==', '!=')):
            return None
        op, want, star = m.group(1), release(m.group(2)), m.group(3)
        if star:
            same = have[:len(want)] == want
            ok = same if op == '==' else not same
        else:
            n = max(len(have), len(want))
            a, b = have + (0,) * (n - len(have)), want + (0,) * (n - len(want))
            ok = {'>=': a >= b, '>': a > b, '<=': a <= b, '<': a < b, '==': a == b,
                  '!=': a != b}[op]
        if not ok:
            return False
    return True


def torch_range(path=os.path.join(ROOT, 'requirements.txt')):
    """requirements.txt's range for torch, e.g. '>=2.1' ('' for none given, None without a torch
    line or without the file)."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding='utf-8') as f:
        for line in f:
            m = re.fullmatch(r'torch\s*([<>=!~][^;]*)?', line.split('#')[0].strip())
            if m:
                return (m.group(1) or '').replace(' ', '')
    return None


def torch_line(version, spec):
    if spec is None:
        return f"torch {version} (requirements.txt names no torch range to compare with)"
    if not spec:
        return f"torch {version}: requirements.txt takes any version"
    ok = satisfies(version, spec)
    said = {True: 'in range', False: 'OUT OF RANGE: install a torch in that range',
            None: 'a range this check cannot read'}[ok]
    return f"torch {version}: requirements.txt asks for torch{spec}: {said}"


def read_class(path=CLASS_FILE):
    """The teacher's labs/class.json, checked: {'code': hex digits, 'torch': a version prefix},
    either key optional; None if there is no file. Anything else is a ValueError naming the
    file."""
    given = load_json(path, CLASS_FIX)
    if given is None:
        return None
    if not isinstance(given, dict) or not given:
        raise ValueError(f"{path} is not an object with 'code' and/or 'torch'; {CLASS_FIX}")
    unknown = sorted(set(given) - {'code', 'torch'})
    if unknown:
        raise ValueError(f"{path} has keys it should not ({', '.join(unknown)}); {CLASS_FIX}")
    code, version = given.get('code'), given.get('torch')
    if code is not None and not (isinstance(code, str)
                                 and re.fullmatch(r'[0-9a-fA-F]{6,64}', code)):
        raise ValueError(f"{path}: 'code' is {code!r}, not 6 to 64 hex digits of a code hash; "
                         f"{CLASS_FIX}")
    if version is not None and not (isinstance(version, str)
                                    and re.fullmatch(r'\d+(\.\d+)*(\+[\w.]+)?', version)):
        raise ValueError(f"{path}: 'torch' is {version!r}, not a version such as 2.13 or "
                         f"2.13.0+cpu; {CLASS_FIX}")
    return {k: v for k, v in (('code', code), ('torch', version)) if v is not None}


def torch_matches(version, prefix):
    """'2.13.0+cpu' matches the prefix '2.13' or '2.13.0' (whole numbers: not '2.1'), and
    '2.13.0+cpu' itself; a prefix with a local part ('+cpu') must be the whole version."""
    if '+' in prefix:
        return str(version) == prefix
    want = release(prefix)
    return release(version)[:len(want)] == want


def against_class(code, version, path=CLASS_FILE):
    """Lines that compare this machine's code hash (the whole hex digest) and torch version with
    the teacher's labs/class.json, and {'code': bool, 'torch': bool} for what it names; ([], None)
    without the file."""
    given = read_class(path)
    if given is None:
        return [], None
    lines, same = [], {}
    if 'code' in given:
        theirs = given['code'].lower()
        same['code'] = code.startswith(theirs)
        lines.append(f"class.json: code hash {'match' if same['code'] else 'MISMATCH'} (here "
                     f"{code[:12]}, the class's {theirs[:12]})"
                     + ("" if same['code'] else ": this is another version of the code; `git "
                        "pull` or download it again, then check again"))
    if 'torch' in given:
        same['torch'] = torch_matches(version, given['torch'])
        lines.append(f"class.json: torch {'match' if same['torch'] else 'MISMATCH'} (here "
                     f"{version}, the class's {given['torch']})"
                     + ("" if same['torch'] else f": install torch {given['torch']} (see the "
                        f"README), then check again"))
    return lines, same


# ---- the prediction

def schedule(durations, jobs, keys=None):
    """When the last of these runs ends if `jobs` run at a time: one by one in the order of keys
    (default: longest first; ties in the order given), each starts on the first slot to come free,
    as runner.run_all starts them. 0 for no runs."""
    if jobs < 1:
        raise ValueError(f"jobs={jobs}: at least one run must go at a time; write e.g. --jobs=2")
    order = sorted(range(len(durations)),
                   key=(lambda i: keys[i]) if keys is not None else (lambda i: -durations[i]))
    free = [0.0] * min(jobs, max(1, len(durations)))  # when each slot comes free
    for i in order:
        heapq.heapreplace(free, free[0] + durations[i])
    return max(free)


def evaluations(cfg):
    """How many evaluations a run makes: at iteration 0, at each multiple of eval_interval, and at
    max_iters (train.py's loop)."""
    n, every = cfg['max_iters'], cfg['eval_interval']
    return 1 + n // every + (n % every != 0)


def minutes(s):
    s = round(s)
    return f"{s // 60} min {s % 60} s" if s >= 60 else f"{s} s"


def sync(dev):
    if dev.startswith('cuda'):
        torch.cuda.synchronize(dev)
    elif dev == 'mps':
        torch.mps.synchronize()


_TASKS = {}  # one task per data settings: every arm of a lab reads the same data


def task_of(cfg):
    key = tuple(sorted((k, v) for k, v in cfg.items()
                       if k.startswith('toy_') or k in ('dataset', 'data_dir')))
    if key not in _TASKS:
        _TASKS.clear()
        _TASKS[key] = task_from_config(cfg)
    return _TASKS[key]


def time_arm(cfg, seconds=3.0, max_steps=20, warmup=5, eval_iters=3, gen_batches=2):
    """(seconds per training step, seconds per evaluation) of a run with settings cfg, on this
    process's torch threads: the model, data, optimizer and steps as train.py makes them (a base
    checkpoint that is not trained yet is stood in for by a random base of its shape; the time of
    a step does not depend on the weights). After `warmup` steps, steps are timed until `seconds`
    have passed or `max_steps` are done (at least 3); a step's time is their median (one slow
    step, the machine busy for a moment, does not move it). The evaluation: min(eval_iters,
    the run's) val-loss batches, scaled to the run's eval_iters, and min(gen_batches, the run's)
    batches of generation (batch_size examples each, as many new tokens as the run allows),
    scaled to the run's number of batches (eval_examples / batch_size, rounded up)."""
    cfg = dict(cfg)
    if cfg['init_from'].endswith('.pt'):  # a fine-tuning run's base (stage 0) is not there yet
        cfg['init_from'] = 'scratch'
    c = SimpleNamespace(**cfg)
    check_train_config(c, DEFAULTS)  # bad settings: train.py's one line
    dev = pick_device(c.device)
    dtype = pick_dtype(c.dtype, dev)
    device_type = 'cuda' if dev.startswith('cuda') else dev
    ctx = (nullcontext() if dtype == 'float32'
           else torch.autocast(device_type=device_type, dtype=getattr(torch, dtype)))
    scaler = torch.amp.GradScaler(device_type, enabled=dtype == 'float16')
    task = task_of(cfg)
    meta, train_set = task['meta'], task['train']
    torch.manual_seed(c.seed)
    with redirect_stdout(io.StringIO()):  # the optimizer's parameter counts: not for this check
        model, gpt = build_model(cfg, meta)
        check_fits(task, gpt.config.block_size)
        if c.method.startswith('bitune'):
            bitune.check_bidir_reaches_kv(c.bitune_variant, gpt.config.n_layer, c.lora_targets)
        model.to(dev)
        optimizer = configure_optimizers(model, c.weight_decay, c.learning_rate,
                                         (c.beta1, c.beta2), device_type, eps=c.adam_eps)
    if c.compile:
        compile_blocks(gpt)
    data_rng = torch.Generator().manual_seed(c.seed)
    train_step = distributed.wrap(model, batch_loss, dev, c.method.startswith('bitune'))
    model.train()

    def step(it):  # train.py's loop body, for one process
        for group in optimizer.param_groups:
            group['lr'] = lr_at(it, c)
        micro = draw_micro_batches(train_set, c, data_rng, dev, meta['pad'])
        forward_backward(train_step, gpt, micro, c, ctx, scaler, bai_weight_at(it, c), 1)
        apply_gradients(model, optimizer, scaler, c)

    for it in range(warmup):
        step(it)
    sync(dev)
    t0, times = time.perf_counter(), []
    while len(times) < 3 or (len(times) < max_steps and time.perf_counter() - t0 < seconds):
        t = time.perf_counter()
        step(warmup + len(times))
        sync(dev)
        times.append(time.perf_counter() - t)
    step_s = statistics.median(times)

    # evaluation, as train.evaluate: val-loss batches (the same every time), then generation
    model.eval()
    examples = task['val'][:c.eval_examples]
    new_tokens = (c.eval_max_new_tokens or meta.get('max_answer')
                  or max(len(ex['answer']) for ex in examples))
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        k = min(eval_iters, c.eval_iters)
        t0 = time.perf_counter()
        for _ in range(k):
            ids = torch.randint(len(task['val']), (c.batch_size,), generator=g).tolist()
            with ctx:
                batch_loss(model, gpt, collate([task['val'][i] for i in ids], dev, meta['pad']),
                           c, 0.0)
        sync(dev)
        loss_s = (time.perf_counter() - t0) * c.eval_iters / k
        evaluate_task(model, examples[:2], meta, dev, c.batch_size, max_new_tokens=2)  # warm-up
        batches = math.ceil(len(examples) / c.batch_size)
        timed = min(gen_batches, batches)
        sync(dev)
        t0 = time.perf_counter()
        evaluate_task(model, examples[:timed * c.batch_size], meta, dev, c.batch_size,
                      max_new_tokens=new_tokens)
        sync(dev)
        generate_s = (time.perf_counter() - t0) * batches / timed
    return step_s, loss_s + generate_s


def cores():
    """The cores this process may use, as runner.run_all counts them."""
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


def startup(cfg):
    """Seconds a run spends before its first step: a new Python that imports train.py (torch with
    it), and the task built from the run's settings (the toy task is generated)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, '-c', 'import train'], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _TASKS.clear()
    task_of(cfg)
    return time.perf_counter() - t0


def check(opts, runs, seconds=3.0, max_steps=20, class_file=CLASS_FILE, say=print, start_s=None):
    """Print the machine check for the share these runs make (labs.plan's, for opts['jobs'] at a
    time) and return its numbers: torch (version), torch_ok (in requirements.txt's range; None if
    it has none), code (12 hex digits), device, dtype, threads, step_s and eval_s per arm, run_s
    per run (as in runs; 0 for a run finished here already, which the lab reuses), start_s (a
    run's start-up, measured unless given), predicted_s, and class ({'code': bool, 'torch':
    bool} against labs/class.json, None without it)."""
    if not runs:
        raise ValueError("no runs to time: name at least one of the lab's arms with --arms")
    jobs, n = opts['jobs'], cores()
    code = shares.code_hash()
    version = str(torch.__version__)
    spec = torch_range()
    first = runs[0]['cfg']
    dev = pick_device(first['device'])
    dtype = pick_dtype(first['dtype'], dev)
    threads = first['threads'] or max(1, n // jobs)
    machine = setup_of(dev, dtype, torch)
    seeds = sorted({r['seed'] for r in runs})
    arms = list(dict.fromkeys(r['arm'] for r in runs))
    say(f"machine check: lab {opts['lab']}, seed{'s' * (len(seeds) > 1)} "
        f"{', '.join(map(str, seeds))}, arms "
        f"{', '.join(arms)}: {len(runs)} runs, {jobs} at a time ({machine['os']}, "
        f"{machine['processor']}, {n} cores)")
    say(torch_line(version, spec))
    say(f"device {dev} (train.py's choice), dtype {dtype}, {threads} torch thread(s) per run "
        f"({n} cores, --jobs={jobs})")
    say(f"code hash {code[:12]}: {SAME_CODE}")
    lines, same = against_class(code, version, class_file)
    for line in lines or ["no labs/class.json from the teacher: read the code hash aloud"]:
        say(line)

    step_s, eval_s = {}, {}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # what each run gets: OMP_NUM_THREADS from run_all
    try:
        start_s = startup(runs[0]['cfg']) if start_s is None else start_s
        time_arm(runs[0]['cfg'], seconds / 3, 3)  # a first round warms the threads and allocator
        for r in runs:
            if r['arm'] not in step_s:
                step_s[r['arm']], eval_s[r['arm']] = time_arm(r['cfg'], seconds, max_steps)
    finally:
        torch.set_num_threads(before)
    say("timed here: " + "; ".join(
        f"{arm} {1000 * step_s[arm]:.0f} ms a step, {eval_s[arm]:.1f} s an evaluation"
        for arm in step_s) + f"; {start_s:.1f} s to start a run")

    done = [finished(r) for r in runs]
    run_s = [0.0 if d else start_s + r['cfg']['max_iters'] * step_s[r['arm']]
             + evaluations(r['cfg']) * eval_s[r['arm']] for r, d in zip(runs, done)]
    at_once = min(jobs, len(runs) - sum(done))
    crowd = 1.0  # more threads at once than cores: the runs share them
    if dev == 'cpu' and at_once * threads > n:
        crowd = at_once * threads / n
        run_s = [s * crowd for s in run_s]
    say("runs: " + ", ".join(
        f"{r['arm']} {r['cfg']['max_iters']} it "
        + ("finished here already (reused)" if d else minutes(s))
        for r, s, d in zip(runs, run_s, done)))
    predicted = 0.0
    for stage in sorted({r['stage'] for r in runs}):  # run_all: a stage after the one before
        mine = [i for i, r in enumerate(runs) if r['stage'] == stage and not done[i]]
        predicted += schedule([run_s[i] for i in mine], jobs,
                              [-runs[i]['cfg']['max_iters'] * runs[i]['tokens_per_step']
                               for i in mine])
    crowded = (f"; {at_once} runs of {threads} thread(s) on {n} cores share them, so each run is "
               f"counted {crowd:.1f}x as long" if crowd > 1 else "")
    say(f"prediction: {minutes(predicted)} for this share on this machine ({jobs} run(s) at a "
        f"time, longest first{crowded}), if the machine is otherwise idle; other programs make it "
        f"longer")
    in_range = None if spec is None else satisfies(version, spec or '>=0')
    return {'torch': version, 'torch_ok': in_range,
            'code': code[:12], 'device': dev, 'dtype': dtype, 'threads': threads,
            'step_s': step_s, 'eval_s': eval_s, 'start_s': start_s, 'run_s': run_s,
            'predicted_s': predicted,
            'class': same}
