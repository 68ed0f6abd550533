"""Data-parallel training (utils/distributed.py) on the CPU with gloo.

Two processes under torchrun must train exactly like one process with the same batch, resume each
other's checkpoints, and stop with one error line when one of them fails. The rest runs in this
process, in a process group of one: DDP's machinery is all there, only the other process is not."""
import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

import train
from data.tasks import collate, load_task
from helpers import ROOT
from utils import distributed
from utils.checkpoint import build_model

TINY = ['--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=32', '--batch_size=16',
        '--eval_iters=2', '--eval_examples=8', '--toy_n_train=200', '--toy_n_val=16',
        '--toy_max_len=6', '--warmup_iters=5', '--device=cpu', '--gradient_accumulation_steps=2',
        '--eval_interval=3']


def torchrun(*args, script='train.py'):
    """`torchrun --standalone --nproc_per_node=2 script TINY args`, as a user would start it."""
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           script, *TINY, *args]
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def one_process(*args):
    train.main(TINY + list(args))


def read_log(out):
    with open(os.path.join(out, 'log.jsonl')) as f:
        return [json.loads(line) for line in f]


def max_differences(out_a, out_b):
    """The largest differences of the two runs' weights, and of AdamW's moments relative to their
    size. AdamW's steps hardly change when every gradient is scaled alike, but its moments do."""
    a, b = (torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True) for out in (out_a, out_b))
    weights = max((a['model'][k] - b['model'][k]).abs().max().item() for k in a['model'])
    moments = max(((sa[k] - sb[k]).abs().max() / sa[k].abs().max()).item()
                  for sa, sb in zip(a['optimizer']['state'].values(),
                                    b['optimizer']['state'].values())
                  for k in ('exp_avg', 'exp_avg_sq'))
    return weights, moments


@pytest.mark.parametrize('args, two_first', [
    (['--method=causal'], False),  # 1 process for 3 steps, then 2 resume it
    # 2 processes (7 + 8 examples), then 1
    (['--method=bitune', '--peft=lora', '--batch_size=15'], True),
])
def test_two_processes_train_like_one_and_resume_across_counts(tmp_path, args, two_first):
    straight, split = str(tmp_path / 'straight'), str(tmp_path / 'split')
    one_process(*args, '--max_iters=6', f'--out_dir={straight}')
    first = ['--max_iters=3', f'--out_dir={split}']
    then = ['--max_iters=6', f'--out_dir={split}', '--init_from=resume']
    if two_first:
        r = torchrun(*args, *first)
        assert r.returncode == 0, r.stderr[-3000:]
        one_process(*args, *then)
    else:
        one_process(*args, *first)
        r = torchrun(*args, *then)
        assert r.returncode == 0, r.stderr[-3000:]
    a, b = read_log(straight), read_log(split)
    assert [row['iter'] for row in b] == [0, 3, 6]
    loss_diff = max(abs(x[k] - y[k])
                    for x, y in zip(a, b) for k in ('train_loss', 'val_loss') if k in x)
    weight_diff, moment_diff = max_differences(straight, split)
    print(f"{' '.join(args)}: max |difference| of the losses {loss_diff:.1e}, "
          f"the weights {weight_diff:.1e}, AdamW's moments {moment_diff:.1e} (relative)")
    # the same sums in another order: equal to float32 rounding. A gradient averaged instead of
    # summed over the processes, or a process training on the wrong examples, is off by far more
    assert loss_diff < 1e-5 and weight_diff < 1e-5 and moment_diff < 1e-4
    assert b[-1]['tokens_per_s'] > 0


CRASH = """
# train.py, except that the process of rank 1 fails in its third loss computation
import os, runpy, sys
import torch
real_ce, calls = torch.nn.functional.cross_entropy, []
def cross_entropy(*args, **kwargs):
    calls.append(1)
    if os.environ['RANK'] == '1' and len(calls) == 3:
        raise RuntimeError('injected failure')
    return real_ce(*args, **kwargs)
torch.nn.functional.cross_entropy = cross_entropy
sys.argv[0] = 'train.py'
runpy.run_path('train.py', run_name='__main__')
"""


def test_a_failing_process_ends_the_run_with_one_error_line(tmp_path):
    script = tmp_path / 'crash.py'
    script.write_text(CRASH)
    t0 = time.time()
    r = torchrun('--method=causal', '--max_iters=50', f'--out_dir={tmp_path / "out"}',
                 script=str(script))
    assert r.returncode != 0
    assert time.time() - t0 < 60  # the other process does not wait for the dead one
    errors = [line for line in r.stderr.splitlines() if 'error: ' in line]
    assert (len(errors) == 1
            and 'error: rank 1: unexpected RuntimeError: injected failure' in errors[0]), \
        r.stderr[-3000:]
    # no traceback from either process
    assert '[rank0]' not in r.stderr and '[rank1]' not in r.stderr


KILLED = (CRASH
          .replace("raise RuntimeError('injected failure')", "os.kill(os.getpid(), signal.SIGKILL)")
          .replace('import os, runpy, sys', 'import os, runpy, signal, sys')
          .replace('fails in', 'is killed (SIGKILL) in'))


def test_a_killed_process_ends_the_run_with_a_line_that_says_so_and_how_to_resume(tmp_path):
    script = tmp_path / 'killed.py'
    script.write_text(KILLED)
    r = torchrun('--method=causal', '--max_iters=50', f'--out_dir={tmp_path / "out"}',
                 script=str(script))
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if 'error: ' in line]
    # rank 0 meets the broken connection or torchrun's SIGTERM first: each line says what happened
    assert len(errors) == 1 and errors[0].startswith('error: rank 0: '), r.stderr[-3000:]
    assert ('another process of this run stopped' in errors[0]
            and '--init_from=resume' in errors[0]), errors[0]
    assert '--init_from=resume' in errors[0] and 'bug' not in errors[0]


# ---- in this process, in a process group of one


@pytest.fixture
def group_of_one(monkeypatch):
    """What torchrun would set up for a single process."""
    monkeypatch.setenv('RANK', '0')
    monkeypatch.setenv('LOCAL_RANK', '0')
    monkeypatch.setenv('WORLD_SIZE', '1')
    monkeypatch.setenv('MASTER_ADDR', '127.0.0.1')
    monkeypatch.setenv('MASTER_PORT', '0')  # any free port
    yield
    distributed.teardown()  # when a test fails halfway


def test_gradient_accumulation_all_reduces_once_per_step(tmp_path, monkeypatch, group_of_one):
    reductions, real_wrap = [], distributed.wrap

    def counting_wrap(*args, **kwargs):
        ddp = real_wrap(*args, **kwargs)

        def hook(state, bucket):
            reductions.append(bucket.index())
            return allreduce_hook(state, bucket)
        ddp.register_comm_hook(None, hook)
        return ddp
    monkeypatch.setattr(distributed, 'wrap', counting_wrap)
    train.main(TINY + ['--method=causal', '--max_iters=3', '--gradient_accumulation_steps=4',
                       f'--out_dir={tmp_path}'])
    assert not dist.is_initialized()
    # the tiny model fits one bucket: one all-reduce per step, not per micro-batch
    assert reductions == [0, 0, 0]


@pytest.mark.parametrize('method, variant, peft', [
    ('causal', 'full', 'lora'), ('bai', 'full', 'none'), ('bitune', 'full', 'none'),
    ('bitune', 'naive', 'lora'), ('bitune', 'shared', 'none'), ('bitune', 'fixed', 'lora'),
    ('bitune_bai', 'full', 'lora'),
])
def test_every_method_trains_under_ddp_with_the_gradients_of_one_process(method, variant, peft,
                                                                         group_of_one):
    """Bitune leaves some parameters without gradients; DDP must neither fail on them nor give
    them any."""
    distributed.setup('cpu')
    task = load_task('toy', n_train=16, n_val=4, max_len=6)
    c = SimpleNamespace(**{**train.DEFAULTS, 'n_layer': 2, 'n_head': 2, 'n_embd': 32,
                           'block_size': 32, 'method': method, 'bitune_variant': variant,
                           'peft': peft})
    torch.manual_seed(0)
    model, gpt = build_model(vars(c), task['meta'])
    if peft == 'lora':
        for n, p in model.named_parameters():
            if 'lora_B' in n:  # B starts at zero; nonzero adapters make every gradient path count
                torch.nn.init.normal_(p, std=0.1)
    step = distributed.wrap(model, train.batch_loss, 'cpu',
                            unused_parameters=method.startswith('bitune'))
    batches = [collate(task['train'][i:i + 4]) for i in (0, 4, 8, 12)]
    # two steps of two micro-batches: a wrong unused set fails the second
    for i, batch in enumerate(batches):
        with distributed.no_sync(step, sync=i % 2 == 1):
            step(gpt, batch, c, 1.0)[0].backward()
        if i % 2 == 1:
            ddp_grads = {n: None if p.grad is None else p.grad.clone()
                         for n, p in model.named_parameters()}
            model.zero_grad(set_to_none=True)
    distributed.teardown()
    for batch in batches[2:]:  # the last step again, without DDP
        train.batch_loss(model, gpt, batch, c, 1.0)[0].backward()
    for n, p in model.named_parameters():
        if p.grad is None:
            # no gradient stays no gradient (AdamW then leaves it alone)
            assert ddp_grads[n] is None, n
        else:
            assert torch.allclose(ddp_grads[n], p.grad, atol=1e-6), n
    if method == 'bitune':
        # the case this test is about
        assert any(g is None for n, g in ddp_grads.items() if 'bidir' in n)


def test_every_process_needs_an_example(tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, 'setup', lambda device: (0, 17, device))
    with pytest.raises(ValueError,
                       match='batch_size=16 leaves some of the 17 processes without examples'):
        train.main(TINY + [f'--out_dir={tmp_path}'])


def test_bench_under_torchrun_times_training_through_ddp(tmp_path, group_of_one):
    import bench
    out = tmp_path / 'bench.json'
    bench.main(['--quick=True', '--n_layer=2', '--n_head=2', '--n_embd=32', '--batch_size=4',
                '--device=cpu', '--peft=lora', f'--out={out}'])
    r = json.loads(out.read_text())
    # generation and inference: one process
    assert set(r) == {'machine', 'config', 'token_ratio', 'train'}
    for row in r['train']:
        assert (row['processes'] == 1
                and row['total_tokens_per_s'] == pytest.approx(row['tokens_per_s']))


def test_each_process_draws_its_own_dropout_masks(tmp_path, monkeypatch):
    """Ranks 0 and 1 of 2, each played alone (no process group: nothing is exchanged)."""
    seeds, real_loss = {}, train.batch_loss

    def recording_loss(*args):
        seeds.setdefault(rank, torch.initial_seed())  # the seed of the generator dropout draws from
        return real_loss(*args)
    monkeypatch.setattr(train, 'batch_loss', recording_loss)
    for rank in (0, 1):
        monkeypatch.setattr(distributed, 'setup', lambda device: (rank, 2, device))
        train.main(TINY + ['--method=causal', '--dropout=0.1', '--max_iters=1',
                           f'--out_dir={tmp_path}', '--overwrite=True'])
    assert seeds[0] != seeds[1]
