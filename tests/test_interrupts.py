"""Ctrl-C, SIGTERM and SIGHUP (a closed terminal, a dropped ssh session) at any moment of train.py
and sample.py: one line `error: interrupted; ...` that says how to go on, exit status 130, never a
traceback, a checkpoint that is whole, and a run that resumes."""
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import ROOT
import train
from utils import checkpoint

TINY = ['--method=causal', '--n_layer=1', '--n_head=2', '--n_embd=16', '--block_size=32',
        '--batch_size=8', '--eval_iters=1', '--eval_examples=4', '--toy_n_train=64',
        '--toy_n_val=8', '--toy_max_len=5', '--warmup_iters=1', '--device=cpu']


def start(*argv):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}
    env.pop('NANOBIDIR_DEBUG', None)
    return subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def handles_sigterm(pid):
    """Whether the process has installed its own SIGTERM handler (the script's first statement
    does so)."""
    with open(f'/proc/{pid}/status') as f:
        caught = int(next(line for line in f if line.startswith('SigCgt:')).split()[1], 16)
    return bool(caught >> (signal.SIGTERM - 1) & 1)


def wait_for(p, ready, timeout=60):
    t0 = time.time()
    while not ready():
        assert p.poll() is None and time.time() - t0 < timeout, p.communicate()
        time.sleep(0.01)


def interrupted(p, sig):
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and 'Traceback' not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith('error:')]
    assert len(lines) == 1 and lines[0].startswith('error: interrupted'), err[-3000:]
    return lines[0]


@pytest.mark.skipif(not os.path.exists('/proc/self/status'),
                    reason='reads /proc to see the handler installed')
@pytest.mark.parametrize('argv, then', [
    (['train.py', *TINY, '--max_iters=2'], '--init_from=resume'),
    (['sample.py', '--ckpt=none.pt'], 'run it again')], ids=['train.py', 'sample.py'])
def test_ctrl_c_while_torch_loads_prints_one_line(tmp_path, argv, then):
    p = start(*argv, f'--out_dir={tmp_path}') if argv[0] == 'train.py' else start(*argv)
    # the script's first line ran; torch is still loading
    wait_for(p, lambda: handles_sigterm(p.pid))
    assert then in interrupted(p, signal.SIGINT)


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],
                         ids=['SIGINT', 'SIGTERM', 'SIGHUP'])
def test_interrupting_a_run_keeps_its_checkpoint_whole_and_it_resumes(tmp_path, sig):
    out = str(tmp_path / 'run')
    p = start('train.py', *TINY, '--max_iters=100000', '--eval_interval=2', f'--out_dir={out}')
    ckpt = os.path.join(out, 'ckpt.pt')
    # the first evaluation after training began: a checkpoint is being written
    for line in p.stdout:
        if line.startswith('iter 2:'):
            break
    wait_for(p, lambda: os.path.exists(ckpt))
    line = interrupted(p, sig)
    assert (sig.name in line) == (sig != signal.SIGINT) and '--init_from=resume' in line
    assert not os.path.exists(ckpt + '.tmp') and not os.path.exists(os.path.join(out, 'lock'))
    _, _, saved = checkpoint.model_from_checkpoint(ckpt)  # whole: it loads
    if sig == signal.SIGHUP:  # and the same command with --init_from=resume goes on from there
        last = train.main(TINY + [f'--max_iters={saved["iter_num"] + 2}', '--eval_interval=2',
                                  f'--out_dir={out}', '--init_from=resume'])
        assert last['iter'] == saved['iter_num'] + 2
