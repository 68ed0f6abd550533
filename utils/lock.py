"""
One process at a time in a folder: train.py holds its out_dir, labs.py its lab's folder, so two runs
never write one log together and an overwrite never deletes a live run's files.

    with lock.held(out_dir, 'train.py'):
        ...   # a second process asking for out_dir gets one line naming this one

The lock is the file FOLDER/lock, created atomically (O_CREAT | O_EXCL), holding the owner's pid,
host and name. A lock whose owner has died (killed, or its machine restarted) is taken over.
"""
import json
import os
import socket
import time
from contextlib import contextmanager


def alive(pid):
    """Whether a process with this pid exists on this machine."""
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    except OSError:
        return False  # Windows: no such process
    return True


def _owner(path):
    """The lock's {'pid', 'host', 'what', 'since'}; None if it is gone, {} while being written."""
    try:
        with open(path, encoding='utf-8') as f:
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        owner = json.loads(text)
        return owner if isinstance(owner, dict) and isinstance(owner.get('pid'), int) else {}
    except ValueError:
        return {}


def take(folder, what):
    """Take FOLDER/lock for this process (what: the program, e.g. 'train.py'); returns its path.
    A ValueError names the live owner and what to do."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"{folder} is a file; choose a folder")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{folder} cannot be a folder ({e.strerror}); choose another") from None
    path = os.path.join(folder, 'lock')
    me = {'pid': os.getpid(), 'host': socket.gethostname(), 'what': what,
          'since': time.strftime('%Y-%m-%d %H:%M:%S')}
    for _ in range(100):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except PermissionError:
            raise ValueError(f"{folder} is not writable; choose another folder") from None
        except FileExistsError:
            owner = _owner(path)
            if owner is None:
                continue  # its owner has just removed it
            if not owner and time.time() - os.path.getmtime(path) < 10:
                owner = me  # just created, not yet written: its owner is alive
            if owner and owner.get('host') not in (None, me['host']):
                raise ValueError(f"{folder} is in use by {owner.get('what')} (pid {owner['pid']} "
                                 f"on {owner['host']}, since {owner.get('since')}); wait for it, "
                                 f"or if that run is gone, delete {path}")
            if owner and alive(owner['pid']):
                raise ValueError(f"{folder} is in use by {owner.get('what')} (pid {owner['pid']}, "
                                 f"since {owner.get('since')}); wait for it to end or stop it, "
                                 f"or choose another folder")
            try:
                os.remove(path)  # its owner has died: take it over
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
            json.dump(me, f)
        return path
    raise ValueError(f"could not take {path}: other processes keep taking it; try again")


def release(path):
    """Remove the lock if this process holds it."""
    owner = _owner(path)
    if owner and owner.get('pid') == os.getpid() and owner.get('host') == socket.gethostname():
        os.remove(path)


@contextmanager
def held(folder, what):
    path = take(folder, what)
    try:
        yield path
    finally:
        release(path)
