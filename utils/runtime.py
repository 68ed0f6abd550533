"""
How every script of the project meets its user: a failure is one line that starts with `error:`
and says what to do, never a traceback; Ctrl-C, `kill` or a dropped terminal stop a run cleanly;
a file is written whole or not at all.

    from utils import runtime
    # first thing, before torch loads
    runtime.catch_signals("continue the run with --init_from=resume")
    ...
    runtime.run_main(main)  # at the bottom of the script

NANOBIDIR_DEBUG=1 shows the whole traceback instead of the one line. This file imports nothing of
the project and not torch, so a script can load it before anything slow.
"""
import errno
import os
import signal
import sys
from contextlib import contextmanager

# how to go on after an interruption or a full disk; each script names its own (catch_signals)
HOW_TO_CONTINUE = ''
# the signals that stop a run: Ctrl-C, `kill` (or a job scheduler, or torchrun), a closed terminal
# or dropped ssh session. Windows has no SIGHUP.
STOPS = tuple(getattr(signal, name) for name in ('SIGINT', 'SIGTERM', 'SIGHUP')
              if hasattr(signal, name))


def catch_signals(how_to_continue):
    """Called first thing by a script started from the command line, before its slow imports
    (torch takes seconds to load): from then on a stop signal ends it with one line,
    `error: interrupted; <how_to_continue>`. Until run_main starts main() the process just exits:
    nothing has been written yet, and an interrupt raised inside a library's import can come out
    as some other error. Inside main() the signals raise KeyboardInterrupt, so the clean-up runs
    (atomic_file removes its .tmp) before run_main prints the line."""
    global HOW_TO_CONTINUE
    HOW_TO_CONTINUE = how_to_continue
    for sig in STOPS:
        signal.signal(sig, _exit_now)


def _exit_now(signum, frame):
    print(f"error: {describe(KeyboardInterrupt(_name(signum)))}", file=sys.stderr, flush=True)
    os._exit(130)  # the exit status of an interrupted program


def _interrupt(signum, frame):
    raise KeyboardInterrupt(_name(signum))


def _name(signum):
    return '' if signum == signal.SIGINT else signal.Signals(signum).name  # Ctrl-C needs no name


def run_main(main, *known):
    """Run a script's main() for a person at a terminal: a failure prints one line, `error: ...`,
    and exits with status 1 (130 for a stop signal). `known`: exception types whose message is
    written for the user, like a ValueError raised by this project's code."""
    # catch_signals ran: from here on, stops clean up
    if signal.getsignal(signal.SIGINT) is _exit_now:
        for sig in STOPS:
            signal.signal(sig, _interrupt)
    try:
        return main()
    except (KeyboardInterrupt, Exception) as e:
        if os.environ.get('NANOBIDIR_DEBUG', '') not in ('', '0'):
            raise
        line = error_line(lost_peer(e) or describe(e, known))
        if line:
            print(line, file=sys.stderr)
        sys.exit(130 if isinstance(e, KeyboardInterrupt) else 1)


def describe(e, known=()):
    """One line about an exception. Bad input (a ValueError raised by this project's code, an
    OSError such as a missing file or no network, or one of `known`) carries a message that says
    what was wrong and what to do. Anything else is a bug rather than the user's mistake (a
    ValueError from inside torch included): its type goes with the message."""
    then = f"; {HOW_TO_CONTINUE}" if HOW_TO_CONTINUE else ""
    if isinstance(e, KeyboardInterrupt):
        return f"interrupted{f' ({e})' if str(e) else ''}{then}"
    if disk_full(e):
        where = f" (writing {e.filename})" if e.filename else ""
        return (f"the disk is full{where}: free space on it "
                f"(old runs' out_dir folders, checkpoints, downloads){then}")
    if isinstance(e, OSError) and e.strerror and e.filename:
        # 'No such file or directory: x' rather than '[Errno 2] ...'
        text = f"{e.strerror}: {e.filename}"
    else:
        text = str(e) or type(e).__name__
    text = ' '.join(text.split())
    if isinstance(e, (OSError, *known)) or (isinstance(e, ValueError) and _raised_here(e)):
        return text
    if isinstance(e, MemoryError) or type(e).__name__ == 'OutOfMemoryError':  # torch's, on a GPU
        return (f"out of memory ({text[:300]}); use a smaller batch_size "
                f"(gradient_accumulation_steps keeps the step's size), block_size or model")
    return (f"unexpected {type(e).__name__}: {text} "
            f"(this looks like a bug; rerun with NANOBIDIR_DEBUG=1 to see where it happened)")


def _raised_here(e):
    """Whether e comes from a line of this project, whose messages are written for the user."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next  # the innermost frame: where it was raised
    where = os.path.abspath(tb.tb_frame.f_code.co_filename) if tb else __file__
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return where.startswith(root + os.sep) and 'site-packages' not in where


def disk_full(e):
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def atomic_file(path, mode='w'):
    """Write path whole or not at all: into path.tmp, renamed to path once complete. os.replace is
    atomic, so a reader, or a run killed mid-write, finds the old file or the new one, never half of
    one. On any failure the .tmp is removed, so that after a full disk our leftovers do not keep it
    full. A full disk's OSError names path (torch.save's writes name no file)."""
    tmp = path + '.tmp'
    try:
        with open(tmp, mode) as f:
            yield f
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if disk_full(e) and not e.filename:
            raise OSError(e.errno, e.strerror, path) from e
        raise

# -----------------------------------------------------------------------------
# Under torchrun (utils/distributed.py): which process reports, and what a lost peer means


def launched():
    """True in a process started by torchrun (which sets RANK, LOCAL_RANK, WORLD_SIZE,
    MASTER_ADDR, ...)."""
    return 'RANK' in os.environ


def lost_peer(e):
    """The message for a process whose run lost another process, or None. When one process dies
    (killed, out of memory, or failed), the others' next collective finds its connection gone (gloo:
    a RuntimeError, 'Connection reset by peer' or 'closed by peer'; torch's DistNetworkError) or
    torchrun stops them with SIGTERM; their own error says nothing of the cause."""
    if not launched():
        return None
    then = f"; {HOW_TO_CONTINUE}" if HOW_TO_CONTINUE else ""
    if isinstance(e, KeyboardInterrupt) and str(e) == 'SIGTERM':
        return (f"stopped by SIGTERM, which torchrun sends when another process of this run "
                f"stopped (killed, or failed: see its output) or when the run itself is "
                f"stopped{then}")
    gone = ('Connection reset by peer', 'Connection closed by peer', 'Broken pipe')
    network_error = getattr(sys.modules.get('torch.distributed'), 'DistNetworkError', ())
    if isinstance(e, network_error) or (isinstance(e, RuntimeError)
                                        and any(g in str(e) for g in gone)):
        return (f"another process of this run stopped (killed, or failed: see its output), "
                f"so this one stopped too{then}")
    return None


def error_line(text):
    """The line to print when a run fails: 'error: text', or None (exit quietly).

    Under torchrun only the first process to fail reports. When one process dies, the others fail
    too (their next collective finds it gone) or torchrun stops them, and their errors would bury
    the cause. They count failures on torchrun's key-value store, which outlives the processes; a
    process that cannot reach it reports anyway."""
    if not launched():
        return f"error: {text}"
    try:
        from datetime import timedelta
        import torch.distributed as dist  # loaded already: only a torchrun process gets here
        store = dist.TCPStore(os.environ['MASTER_ADDR'], int(os.environ['MASTER_PORT']),
                              is_master=False, timeout=timedelta(seconds=10))
        first = store.add(f"failures/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", 1) == 1
    except Exception:
        first = True
    return f"error: rank {os.environ['RANK']}: {text}" if first else None
