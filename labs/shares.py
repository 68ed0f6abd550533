"""
A lab shared by a class: what a run's numbers depend on (fingerprint: its settings and the hash of
the method code), the small file a student hands in per seed (write_shares), and the teacher's side:
every share and finished run folder under a folder (handed_in), matched with the lab's plan (pool).

    share_s14.json = {'lab': 'methods', 'seed': 14, 'arms': ['causal', 'bitune'],
                      'runs': [{**record(run), 'rows': [its log's rows]}, ...]}
"""
import hashlib
import os
import re

from labs.aggregate import rows_of
from labs.runner import ROOT, read_json, record, write_json
from utils.rundir import read_log

# The files whose edits change a run's numbers: train.py and what it imports (utils/plot.py only
# draws)
CODE = ('train.py', 'configurator.py', 'model.py', 'adapters.py', 'bitune.py', 'bai.py',
        'data/tasks.py', 'data/toy/toy.py', 'utils/checkpoint.py', 'utils/evaluate.py',
        'utils/distributed.py', 'utils/weights.py', 'utils/rundir.py', 'utils/runtime.py')
# Settings that say where a run goes or what to do with an old one, not what it computes
PLACES = ('out_dir', 'overwrite')


def code_hash():
    """sha256 of the code in CODE, file names included."""
    h = hashlib.sha256()
    for name in CODE:
        with open(os.path.join(ROOT, name), 'rb') as f:
            h.update(name.encode() + b'\0' + f.read() + b'\0')
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


def write_shares(runs, opts):
    """out_dir/share_s<seed>.json for every seed whose runs all finished: what a student hands in.
    Per run its record (arm, views, max_iters, tokens_per_step, cost, fingerprint) and every
    evaluation row of its log; a few kB, no checkpoints. Returns the paths."""
    paths = []
    for seed in opts['seeds']:
        mine = [r for r in runs if r['seed'] == seed]
        rows = [rows_of(r) for r in mine]
        if not all(rows):
            continue  # no score yet for some run; the next run of the command writes it
        arms = [a for a in opts['arms'] if any(r['arm'] == a for r in mine)]
        share = {'lab': opts['lab'], 'seed': seed, 'arms': arms,
                 'runs': [{**record(r), 'rows': rr} for r, rr in zip(mine, rows)]}
        paths.append(os.path.join(opts['out_dir'], f'share_s{seed}.json'))
        write_json(paths[-1], share)
    return paths


def handed_in(top, lab):
    """Every finished run of lab `lab` under the folder top: [(where it came from, its record with
    'rows')], from share files and from the run folders of full labs (run.json and log.jsonl), those
    of a seed whose share lies in its lab's folder left out (that share holds them). A share of
    another lab, a seed handed in twice, or nothing at all is refused, naming the file."""
    found = []
    for where, dirs, files in os.walk(top):
        dirs.sort()
        for name in sorted(f for f in files if re.fullmatch(r'share_s\d+\.json', f)):
            path = os.path.join(where, name)
            share = read_json(path)
            found += [(path, {**rec, 'lab': share['lab']}) for rec in share['runs']]
        rec = read_json(os.path.join(where, 'run.json')) if 'run.json' in files else None
        lab_dir = os.path.dirname(os.path.dirname(where))  # runs lie in lab_dir/<arm>/s<seed>...
        if rec and not os.path.exists(os.path.join(lab_dir, f"share_s{rec['seed']}.json")):
            found.append((f"{lab_dir} (seed {rec['seed']}'s run folders)",
                          {**rec, 'rows': read_log(where)}))
    source = {}
    for where, rec in found:
        if rec.get('lab', lab) != lab:
            raise ValueError(f"{where} is a share of lab '{rec['lab']}', not '{lab}'; pool it with "
                             f"--lab={rec['lab']}")
        other = source.setdefault(rec['seed'], where)
        if other != where:
            raise ValueError(f"seed {rec['seed']} is handed in twice: {other} and {where}; keep "
                             f"one of them")
    if not found:
        raise ValueError(f"--pool={top}: no share_s*.json and no finished run folders in it")
    return found


def pool(found, planned, arms):
    """The runs `planned` (labs.plan() for the seeds found) with the rows handed in (handed_in),
    each checked against its plan: the same settings and code as this lab's run of that arm and
    seed. arms: the arms this command asks for (--arms); a run of another arm is left out."""
    runs = {(r['arm'], r['seed'], tuple(r['views'])): r for r in planned}
    for where, rec in found:
        r = runs.get((rec['arm'], rec['seed'], tuple(rec['views'])))
        if r is None and (rec['arm'] in arms or rec['arm'] == 'base'):
            raise ValueError(f"{where}: its '{rec['arm']}' run of seed {rec['seed']} "
                             f"({rec['max_iters']} iterations) is not one this lab plans; pool "
                             f"with the options the shares were made with (e.g. --quick)")
        if r is None:
            continue  # an arm this command does not ask for (--arms)
        if rec['fingerprint'] != r['fingerprint']:
            mine, theirs = r['fingerprint']['settings'], rec['fingerprint']['settings']
            diff = [k for k in sorted({*mine, *theirs}) if mine.get(k) != theirs.get(k)]
            changed = ', '.join(f'{k}={theirs.get(k)!r}, not {mine.get(k)!r}' for k in diff[:3])
            what = f"settings ({changed})" if diff else 'code (its method files differ from these)'
            raise ValueError(f"{where}: its '{rec['arm']}' run of seed {rec['seed']} was made with "
                             f"other {what}; pool only shares of the same command (e.g. --quick) "
                             f"on the same code")
        r['rows'], r['source'] = rec['rows'], where
    return list(runs.values())
