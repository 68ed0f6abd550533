"""
A lab shared by a class: what a run's numbers depend on (fingerprint: its settings and the hash of
the method code), the small file a student hands in per seed (write_shares), and the teacher's side:
the shares and run folders handed in (labs/handin.py reads and checks them) matched with the lab's
plan (pool), pooled once (pool_pass) or again each time one lands (watch).

    share_s14.json = {'lab': 'methods', 'seed': 14, 'arms': ['causal', 'bitune'],
                      'runs': [{**record(run), 'setup': {...}, 'rows': [its log's rows]}, ...]}
"""
import hashlib
import os
import time

from labs import aggregate, handin, report
from labs.aggregate import rows_of
from labs.runner import ROOT, record, write_json

# The files whose edits change a run's numbers: train.py and what it imports (utils/plot.py only
# draws, utils/lock.py only keeps a second run out of the folder)
CODE = ('train.py', 'configurator.py', 'model.py', 'adapters.py', 'bitune.py', 'bai.py',
        'data/tasks.py', 'data/toy/toy.py', 'utils/checkpoint.py', 'utils/evaluate.py',
        'utils/distributed.py', 'utils/weights.py', 'utils/rundir.py', 'utils/runtime.py')
# Settings that say where a run goes or what to do with an old one, not what it computes
PLACES = ('out_dir', 'overwrite')
# Settings that say what a run ran on, not what it computes: pooling accepts any (a share records
# what ran, its 'setup'), though a run is reused only with the same
MACHINE = ('device', 'threads')
RESULTS = 'results.md, results.json, results_forest.png, results.png, results_curves.png'


def code_hash(root=ROOT):
    """sha256 of the code in CODE, file names included, with LF line ends (a Windows checkout's
    CRLF hashes the same)."""
    h = hashlib.sha256()
    for name in CODE:
        with open(os.path.join(root, name), 'rb') as f:
            h.update(name.encode() + b'\0' + f.read().replace(b'\r\n', b'\n') + b'\0')
    return h.hexdigest()


def fingerprint(cfg, base=None):
    """What a run's numbers depend on: its resolved settings (a config file's values, not its path;
    every setting but PLACES, and data_dir only where the data is read from it) and the hash of the
    code. base: the fingerprint of the run whose checkpoint init_from names, which stands for that
    path, so that the same base trained in another folder (another student's) gives the same
    fingerprint."""
    settings = {k: v for k, v in sorted(cfg.items()) if k not in PLACES}
    if settings['dataset'] == 'toy':  # generated from the toy_* settings; no folder is read
        del settings['data_dir']
    if base is not None:
        settings['init_from'] = base
    return {'settings': settings, 'code': code_hash()}


def write_shares(runs, opts, every=None):
    """out_dir/share_s<seed>.json for every seed whose runs (those this command ran) all finished:
    what a student hands in. It holds every finished run of that seed in out_dir (every: the whole
    lab's plan there, every arm), whatever --arms each command named. Per run its record (arm,
    views, max_iters, tokens_per_step, cost, fingerprint), the setup it ran on (its log's first
    row) and every evaluation row of its log; a few kB, no checkpoints. Returns [(path, arms)]."""
    written = []
    for seed in opts['seeds']:
        if not all(rows_of(r) for r in runs if r['seed'] == seed):
            continue  # no score yet for some run; the next run of the command writes it
        mine = [(r, rows) for r in (every or runs) if r['seed'] == seed
                for rows in [rows_of(r)] if rows]
        arms = [a for a in dict.fromkeys(r['arm'] for r, _ in mine) if a != 'base']
        share = {'lab': opts['lab'], 'seed': seed, 'arms': arms,
                 'runs': [{**record(r), **({'setup': rows[0]['setup']} if 'setup' in rows[0]
                                           else {}), 'rows': rows} for r, rows in mine]}
        written.append((os.path.join(opts['out_dir'], f'share_s{seed}.json'), arms))
        write_json(written[-1][0], share)
    return written


def against_plan(where, rec, r, arms):
    """The planned run r that rec, a run handed in, is (None: an arm --arms leaves out), checked:
    the same settings (but MACHINE) and code."""
    if r is None and (rec['arm'] in arms or rec['arm'] == 'base'):
        raise ValueError(f"{where}: its '{rec['arm']}' run of seed {rec['seed']} "
                         f"({rec['max_iters']} iterations) is not one this lab plans; pool "
                         f"with the options the shares were made with (e.g. --quick)")
    if r is None:
        return None  # an arm this command does not ask for (--arms)
    mine, theirs = ({k: v for k, v in fp['settings'].items() if k not in MACHINE}
                    for fp in (r['fingerprint'], rec['fingerprint']))
    if mine != theirs or rec['fingerprint']['code'] != r['fingerprint']['code']:
        diff = [k for k in sorted({*mine, *theirs}) if mine.get(k) != theirs.get(k)]
        changed = ', '.join(f'{k}={theirs.get(k)!r}, not {mine.get(k)!r}' for k in diff[:3])
        what = f"settings ({changed})" if diff else 'code (its method files differ from these)'
        raise ValueError(f"{where}: its '{rec['arm']}' run of seed {rec['seed']} was made with "
                         f"other {what}; pool only shares of the same command (e.g. --quick) "
                         f"on the same code")
    if rec['max_iters'] != r['cfg']['max_iters']:
        raise ValueError(f"{where}: its '{rec['arm']}' run of seed {rec['seed']} says "
                         f"max_iters {rec['max_iters']}, its settings {r['cfg']['max_iters']}; "
                         f"{handin.SHARE_FIX}")
    return r


def pool(found, planned, arms, strict=True, say=print):
    """The runs `planned` (labs.plan() for the seeds found) with the rows handed in (handin), each
    checked against its plan (against_plan); a share that fails is a ValueError (strict) or a line
    said and left out, whole. arms: the arms this command asks for (--arms); a run of another arm
    is left out. Returns the runs and the entries of found that were pooled."""
    runs = {(r['arm'], r['seed'], tuple(r['views'])): r for r in planned}
    pooled = []
    for where, recs in found:
        try:
            matched = [(against_plan(where, rec, runs.get((rec['arm'], rec['seed'],
                                                          tuple(rec['views']))), arms), rec)
                       for rec in recs]
        except ValueError as e:
            handin.left_out(e, strict, say)
            continue
        for r, rec in matched:
            if r is not None:
                r['rows'], r['source'] = rec['rows'], where
        pooled.append((where, recs))
    return list(runs.values()), pooled


def pool_pass(opts, plan, lab, strict=True, say=print):
    """Pool the folder opts['pool'] once: what is handed in (handin.handed_in), matched with
    plan(opts) (labs.plan, for the seeds found, which it sets in opts), aggregated with the setups
    the runs ran on, and written (report.write_results). Returns the results and the lines of
    results.md; None when nothing pools (strict=False: a watch waits for shares)."""
    found = handin.handed_in(opts['pool'], opts['lab'], lab, strict, say, own=opts['out_dir'])
    opts['seeds'] = sorted({r['seed'] for _, recs in found for r in recs})
    runs, found = pool(found, plan(opts), opts['arms'], strict, say)
    opts['seeds'] = sorted({r['seed'] for _, recs in found for r in recs})
    if not found:
        return None
    runs = [r for r in runs if r['seed'] in opts['seeds']]
    results = {**aggregate.aggregate(runs, opts, lab),
               'pooled': sorted({r['source'] for r in runs if 'source' in r}),
               'setups': handin.setups(found)}
    return results, report.write_results(results, opts['out_dir'])


def watch(folder, one_pass, sleep=time.sleep, stop=lambda: False, every=1.0):
    """one_pass() now, and again each time a share or run file under folder is new, changed or
    gone (handin.snapshot, polled every `every` seconds), until stop() is true or Ctrl-C (a
    KeyboardInterrupt, for the caller)."""
    seen = None
    while not stop():
        now = handin.snapshot(folder)
        if now != seen:
            seen = now
            one_pass()
        sleep(every)


def pool_command(opts, plan, lab):
    """labs.py --pool: pool once (a file that fails a check is the error), or with --watch, again
    each time a share lands, printing n and each arm's intervals (a file that fails is a line, left
    out), until Ctrl-C, which ends it with a line that says where the results are."""
    where = f"{opts['out_dir']}/{RESULTS}"
    if not opts['watch']:
        res, lines = pool_pass(opts, plan, lab)
        ran = [f"ran on {s['setup']}: {s['shares']} share(s)" for s in res['setups']]
        print('\n'.join([*lines, *ran, f"pooled {len(opts['seeds'])} seeds "
                         f"({', '.join(map(str, opts['seeds']))}) from {opts['pool']}",
                         f"wrote {where}"]))
        return res
    pooled = []

    def one_pass():
        done = pool_pass(opts, plan, lab, strict=False)
        now = time.strftime('%H:%M:%S')
        if done is None:
            print(f"{now} nothing to pool yet in {opts['pool']}; waiting for shares", flush=True)
            return
        pooled.append(done[0])
        print('\n'.join([f"{now} n = {len(opts['seeds'])} seeds "
                         f"({', '.join(map(str, opts['seeds']))}) from {opts['pool']}",
                         *aggregate.intervals(done[0]),
                         f"  wrote {opts['out_dir']}/results.md and its pictures"]), flush=True)
    print(f"watching {opts['pool']}: pooling again each time a share lands; Ctrl-C stops")
    try:
        watch(opts['pool'], one_pass)
    except KeyboardInterrupt:
        pass
    print(f"stopped watching {opts['pool']}; " +
          (f"the results of the last pool (n = {len(pooled[-1]['seeds'])}) are in {where}"
           if pooled else "nothing was pooled"))
    return pooled[-1] if pooled else None
