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
