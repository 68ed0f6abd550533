"""utils/lock.py: one process at a time in a folder. A live owner is named; a dead one's lock is
taken over; the lock goes when its holder ends."""
import json
import os
import subprocess
import sys

import pytest

from utils import lock


def sleeper():
    """A live process that is not this one."""
    return subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])


def write_lock(folder, **owner):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, 'lock'), 'w') as f:
        json.dump({'host': __import__('socket').gethostname(), 'what': 'train.py', 'since': 'noon',
                   **owner}, f)


def test_a_live_owner_is_named_and_its_lock_kept(tmp_path):
    other = sleeper()
    try:
        write_lock(tmp_path, pid=other.pid)
        owner = rf'in use by train.py \(pid {other.pid}, since noon\)'
        with pytest.raises(ValueError, match=owner):
            lock.take(str(tmp_path), 'train.py')
        assert json.load(open(tmp_path / 'lock'))['pid'] == other.pid
    finally:
        other.kill()
        other.wait()


def test_a_dead_owners_lock_is_taken_over_and_released(tmp_path):
    gone = sleeper()
    gone.kill()
    gone.wait()
    write_lock(tmp_path, pid=gone.pid)
    with lock.held(str(tmp_path), 'labs.py') as path:
        assert json.load(open(path))['pid'] == os.getpid()
        with pytest.raises(ValueError, match='in use by labs.py'):  # the same folder twice: refused
            lock.take(str(tmp_path), 'train.py')
    assert not os.path.exists(path)


def test_an_owner_on_another_machine_is_not_guessed_dead(tmp_path):
    write_lock(tmp_path, pid=1, host='elsewhere')
    with pytest.raises(ValueError, match=r'pid 1 on elsewhere.*delete .*lock'):
        lock.take(str(tmp_path), 'train.py')


def test_a_lock_being_written_counts_as_alive_and_an_old_broken_one_as_dead(tmp_path):
    (tmp_path / 'lock').write_text('')  # created, its owner not yet done writing
    with pytest.raises(ValueError, match='in use'):
        lock.take(str(tmp_path), 'train.py')
    os.utime(tmp_path / 'lock', (0, 0))  # an empty lock from long ago: its owner died mid-write
    lock.release(lock.take(str(tmp_path), 'train.py'))
    assert not (tmp_path / 'lock').exists()


# --------------------------------------------------------------------------- train.py holds out_dir

TINY = ['--method=causal', '--n_layer=1', '--n_head=1', '--n_embd=16', '--block_size=32',
        '--batch_size=4', '--eval_iters=1', '--eval_examples=4', '--toy_n_train=64',
        '--toy_n_val=8', '--toy_max_len=5', '--device=cpu', '--threads=1']


def test_train_refuses_a_second_run_a_resume_and_an_overwrite_of_a_live_run(tmp_path):
    import train
    from helpers import ROOT
    out = str(tmp_path / 'out')
    live = subprocess.Popen([sys.executable, 'train.py', *TINY, '--max_iters=100000',
                             '--eval_interval=2', f'--out_dir={out}'], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):  # until it has written its first checkpoint (a run to resume)
            if os.path.exists(os.path.join(out, 'ckpt.pt')) or live.poll() is not None:
                break
            __import__('time').sleep(0.1)
        assert live.poll() is None, 'the first run ended too soon'
        owner = open(os.path.join(out, 'lock')).read()
        for extra in ([], ['--init_from=resume'], ['--overwrite=True']):
            with pytest.raises(ValueError, match=rf'{out} is in use by train.py \(pid {live.pid}'):
                train.main(TINY + ['--max_iters=2', f'--out_dir={out}', *extra])
        # the live run's lock, log and checkpoint are still there: the overwrite deleted nothing
        assert open(os.path.join(out, 'lock')).read() == owner
        assert all(os.path.exists(os.path.join(out, f)) for f in ('log.jsonl', 'ckpt.pt'))
    finally:
        live.kill()  # SIGKILL: it leaves its lock behind
        live.wait()
    assert json.load(open(os.path.join(out, 'lock')))['pid'] == live.pid
    last = train.main(TINY + ['--max_iters=2', '--eval_interval=2', f'--out_dir={out}',
                              '--overwrite=True'])  # its owner is dead: taken over
    assert last['iter'] == 2 and not os.path.exists(os.path.join(out, 'lock'))  # and released
