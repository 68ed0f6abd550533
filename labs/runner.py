"""
Running a lab's runs: each train.py run in its own process (launch), `jobs` at a time, stage by
stage (run_all); Ctrl-C or SIGTERM stops them all (stop), and so does labs.py's death
(die_with_parent). A run that ends well gets out_dir/run.json, its record (what it is and its
fingerprint), so that the same command reuses it (finished); read_record reads one, checked, as it
reads any JSON file handed in (load_json: a regular file of UTF-8 JSON, or one line that says why).

    failed = run_all(runs, jobs=2, again='python labs/labs.py ...')   # the runs of labs.plan()
"""
import json
import os
import signal
import subprocess
import sys
import time

from tqdm import tqdm

from utils.rundir import read_log
from utils.runtime import atomic_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # runs start here, at train.py


MAX_BYTES = 50 * 2**20  # a share is a few kB; a run.json well under one


def load_json(path, fix):
    """The JSON in the file path, None if there is none. A file handed in is untrusted: anything
    but a regular file of UTF-8 JSON text (a broken link, a FIFO, which would block a reader,
    binary, half a file) is a ValueError naming it, what is wrong and `fix`, what to do."""
    if not os.path.lexists(path):
        return None
    if not os.path.exists(path):
        raise ValueError(f"{path} is a link to a file that is not there; {fix}")
    if not os.path.isfile(path):  # stat.S_ISREG: a FIFO or a device is never opened
        raise ValueError(f"{path} is not a regular file; {fix}")
    if os.path.getsize(path) > MAX_BYTES:
        raise ValueError(f"{path} is larger ({os.path.getsize(path):,} bytes) than any file "
                         f"labs.py writes; {fix}")
    try:
        with open(path, 'rb') as f:
            text = f.read().decode('utf-8')
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not text (not UTF-8); {fix}") from None
    except OSError as e:
        raise ValueError(f"{path} cannot be read ({e.strerror}); {fix}") from None
    if not text.strip():
        raise ValueError(f"{path} is empty; {fix}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:  # an end too early: a copy or download cut short
        cut = e.pos >= len(text.rstrip()) or e.msg.startswith('Unterminated string')
        raise ValueError(f"{path} is not JSON{' (cut short)' if cut else ''}: {e.msg} (line "
                         f"{e.lineno}, column {e.colno}); {fix}") from None
    except RecursionError:
        raise ValueError(f"{path} is nested too deep to be a file labs.py wrote; {fix}") from None


def whole(x, least=0):
    return isinstance(x, int) and not isinstance(x, bool) and x >= least


def shown(value):
    """A value as an error line quotes it: short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + '...'


# What pooling and reuse read of a run's record (record()): each key, its test, what it should be
RECORD = {'arm': (lambda v: isinstance(v, str) and v != '', 'an arm name'),
          'seed': (whole, 'a whole number >= 0'),
          'views': (lambda v: isinstance(v, list) and all(x in ('steps', 'compute') for x in v)
                    and 0 < len(set(v)) == len(v), "a list of 'steps' and/or 'compute'"),
          'max_iters': (lambda v: whole(v, 1), 'a whole number >= 1'),
          'fingerprint': (lambda v: isinstance(v, dict) and isinstance(v.get('settings'), dict)
                          and isinstance(v.get('code'), str), "{'settings': {...}, 'code': ...}")}
RUN_JSON_FIX = ("delete that run's folder (the same lab command runs it again), or pool the lab's "
                "share_s<seed>.json instead")


def check_record(rec, where, fix):
    """rec, a run's record (run.json, or a run in a share), as record() writes it; else a ValueError
    that names `where` (the file, and the run in it), the key, and `fix`, what to do."""
    if not isinstance(rec, dict):
        raise ValueError(f"{where} is not a run's record (a JSON {type(rec).__name__}, not an "
                         f"object); {fix}")
    for key, (ok, what) in RECORD.items():
        if key not in rec:
            raise ValueError(f"{where} has no '{key}'; {fix}")
        if not ok(rec[key]):
            raise ValueError(f"{where}: '{key}' is {shown(rec[key])}, not {what}; {fix}")
    return rec


def read_record(path):
    """The record in a run folder's run.json (None if it has none), checked (check_record)."""
    rec = load_json(path, RUN_JSON_FIX)
    return None if rec is None else check_record(rec, path, RUN_JSON_FIX)


def write_json(path, obj):
    with atomic_file(path) as f:  # a stop never leaves half a file under the real name
        json.dump(obj, f)


def record(run):
    """What a run is, without its rows: the file run.json in its folder, and its entry in a
    share."""
    return {'arm': run['arm'], 'seed': run['seed'], 'views': list(run['views']),
            'max_iters': run['cfg']['max_iters'], 'tokens_per_step': run['tokens_per_step'],
            'cost': run['cost'], 'fingerprint': run['fingerprint']}


def logged_to_the_end(run):
    rows = read_log(run['out_dir'])
    return bool(rows) and rows[-1]['iter'] == run['cfg']['max_iters']


def finished(run):
    """Done with the same settings and code. run.json is written only after the run has ended well,
    and removed before it starts again, so a stopped or failed run is never taken for a finished
    one."""
    done = read_record(os.path.join(run['out_dir'], 'run.json'))
    return done is not None and done['fingerprint'] == run['fingerprint'] and logged_to_the_end(run)


def die_with_parent():
    """For Linux: a function the child runs before train.py that asks the kernel to SIGKILL it when
    labs.py dies, however it dies (SIGKILL runs no handler of ours; prctl PR_SET_PDEATHSIG = 1 does
    not need one). Without it a killed lab would leave its runs training, unwatched, for an hour.
    Where prctl is missing (macOS, Windows) None: only a stop labs.py sees (Ctrl-C, SIGTERM) stops
    its runs."""
    if not sys.platform.startswith('linux'):
        return None
    import ctypes
    prctl = getattr(ctypes.CDLL(None, use_errno=True), 'prctl', None)
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec():  # in the forked child; launch() runs in labs.py's only thread, the one watched
        prctl(1, signal.SIGKILL)
        if os.getppid() != parent:  # labs.py died before the line above took effect
            os._exit(1)
    return preexec


def launch(run, threads):
    """Start one run in its own process (nothing shared; a crash stays contained) and its own
    process group (stop() ends it with whatever it started), its output in out_dir/train.txt. A run
    that did not finish with these settings starts over in its folder: --overwrite=True. train.py is
    deterministic, so a restarted run ends with the numbers an uninterrupted one has; its log is
    written afresh."""
    os.makedirs(run['out_dir'], exist_ok=True)
    if os.path.exists(os.path.join(run['out_dir'], 'run.json')):
        os.remove(os.path.join(run['out_dir'], 'run.json'))  # until it ends well, not finished
    env = {**os.environ, 'OMP_NUM_THREADS': str(threads), 'MKL_NUM_THREADS': str(threads)}
    with open(os.path.join(run['out_dir'], 'train.txt'), 'w') as log:  # the child has its own copy
        return subprocess.Popen([sys.executable, 'train.py', *run['argv'], '--overwrite=True'],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                start_new_session=True, preexec_fn=die_with_parent())


def stop(procs, grace=5.0):
    """End these runs' process groups: SIGTERM, then SIGKILL for any still there after `grace`
    seconds."""
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass  # it has just ended by itself
    deadline = time.time() + grace
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def run_all(runs, jobs, again):
    """Stage by stage (fine-tuning needs its base), `jobs` runs at a time; returns the failed runs.
    Ctrl-C or SIGTERM stops the running runs, starts no other, and exits (130) with one line that
    says what is kept and that `again`, the same command, continues the lab."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    threads = max(1, cores // jobs)  # N runs of cores/N threads: shared, never oversubscribed
    # the longest runs first, so no job idles at the end waiting for a long one
    todo = sorted((r for r in runs if not finished(r)),
                  key=lambda r: (r['stage'], -r['cfg']['max_iters'] * r['tokens_per_step']))
    print(f"{len(runs)} runs, {len(runs) - len(todo)} of them reused from earlier (same settings "
          f"and code); {jobs} at a time, {threads} thread(s) each")
    failed, running, signals = [], {}, []
    handlers = {s: signal.signal(s, lambda signum, frame: signals.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    tqdm.monitor_interval = 0  # no monitor thread: launch() forks, safe only with one thread
    t0, bar = time.time(), tqdm(total=len(todo), desc='runs', dynamic_ncols=True)
    try:
        while (todo or running) and not signals:
            stage = min(r['stage'] for r in todo + [r for r, _ in running.values()])
            while todo and todo[0]['stage'] == stage and len(running) < jobs and not signals:
                r = todo.pop(0)
                running[launch(r, threads)] = r, time.time()
            for proc in [p for p in running if p.poll() is not None]:
                r, started = running.pop(proc)
                if proc.returncode == 0 and logged_to_the_end(r):
                    write_json(os.path.join(r['out_dir'], 'run.json'), record(r))
                else:
                    failed.append(r)
                outcome = 'failed, see its train.txt' if r in failed else 'done'
                tqdm.write(f"{r['arm']} seed {r['seed']} ({r['cfg']['max_iters']} it): {outcome} "
                           f"in {time.time() - started:.0f}s -> {r['out_dir']}")
                bar.update()
            time.sleep(0.05)
    finally:  # a signal, or labs.py's own failure: no run outlives it
        stop(list(running))
        for s, h in handlers.items():
            signal.signal(s, h)
        bar.close()
    if signals:
        kept = len(runs) - len(todo) - len(running) - len(failed)
        print(f"stopped: {kept} of {len(runs)} runs are finished and kept, {len(running)} were "
              f"stopped, {len(failed)} failed and {len(todo)} not started (they run next time); "
              f"to continue, run the same command: {again}", file=sys.stderr)
        sys.exit(130)
    print(f"total {time.time() - t0:.0f}s")
    return failed
