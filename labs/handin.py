"""
What a class hands in, read as untrusted input: every share_*.json and finished run folder under a
folder, whatever else the folder holds (students' folders, zip extracts), each checked before its
numbers are pooled (read_share, read_run_folder). A file that fails a check is a ValueError that
names it, the place in it (run, row, key) and what to do; anything else is ignored, and counted.

    found = handed_in('handed_in/', 'methods', LABS['methods'])  # [(where, [records with rows])]
    setups(found)   # [{'setup': 'cpu, float32, 2 threads, ...', 'shares': 7}, ...]
"""
import math
import os
import re

from labs.aggregate import scores_of
from labs.runner import ROOT, RUN_JSON_FIX, check_record, load_json, read_record, shown, whole
from utils.rundir import read_log

SHARE_FIX = "ask its author for the share as labs.py wrote it, or take it out of the folder"
SHARE = re.compile(r'share_.*\.json')  # read and checked: a share, or an error
RUN_FOLDER = re.compile(r's(\d+)(_equal_compute)?')  # a lab's run folder: <arm>/s<seed>...
# what a pool writes in its own folder, which may be the folder pooled
OURS = ('lock', 'results.json', 'results.md', 'results_forest.png', 'results.png',
        'results_curves.png')
PUBLISHED = os.path.join(ROOT, 'labs', 'results')  # our own classes' shares: */shares/share_s*


def published(lab):
    """{(seed, arm, views): rows} of every share of lab `lab` published under labs/results/."""
    rows = {}
    for folder, _, files in os.walk(PUBLISHED):
        for name in files:
            share = (load_json(os.path.join(folder, name), SHARE_FIX)
                     if SHARE.fullmatch(name) and os.path.basename(folder) == 'shares' else None)
            for rec in share['runs'] if share and share.get('lab') == lab else []:
                rows[rec['seed'], rec['arm'], tuple(rec['views'])] = rec['rows']
    return rows


def walk(top, say=None):
    """os.walk(top), sorted, into linked folders too, each real folder once (a link to a folder
    above it would loop). say(line): what is skipped, and why."""
    seen = set()

    def unreadable(e):
        if say:
            say(f"ignored {e.filename}: cannot be read ({e.strerror})")
    for where, dirs, files in os.walk(top, onerror=unreadable, followlinks=True):
        if os.path.realpath(where) in seen:
            dirs[:] = []
            if say:
                say(f"ignored {where}: a link to {os.path.realpath(where)}, read already")
            continue
        seen.add(os.path.realpath(where))
        dirs.sort()
        yield where, dirs, sorted(files)


def number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_rows(rows, where, max_iters, metric, fix):
    """A run's log rows as train.py writes them, up to its last iteration: each with its iteration
    (rising), seconds and the lab's metric, every score a number from 0 to 100."""
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{where}: 'rows' is {shown(rows)}, not its log's rows; {fix}")
    last = -1
    for i, row in enumerate(rows):
        at = f"{where}, row {i}"
        if not isinstance(row, dict):
            raise ValueError(f"{at} is {shown(row)}, not a row of train.py's log; {fix}")
        for key in ('iter', 'elapsed_s', metric):
            if key not in row:
                raise ValueError(f"{at} has no '{key}'; {fix}")
        if not whole(row['iter'], last + 1):
            raise ValueError(f"{at}: 'iter' is {shown(row['iter'])}, not an iteration after the "
                             f"row before's ({last}); {fix}")
        if not number(row['elapsed_s']) or row['elapsed_s'] < 0:
            raise ValueError(f"{at}: 'elapsed_s' is {shown(row['elapsed_s'])}, not seconds; {fix}")
        for key, v in scores_of(row).items():
            if not number(v) or not 0 <= v <= 100:
                raise ValueError(f"{at}: '{key}' is {shown(v)}, not a score from 0 to 100; {fix}")
        last = row['iter']
    if last != max_iters:
        raise ValueError(f"{where}: its rows stop at iteration {last}, before its last "
                         f"({max_iters}): the run did not finish; {fix}")


def check_run(rec, where, arms, fix):
    """A run's record with its rows (a run of a share, or a run folder's run.json and log), as
    pooling reads it; its 'setup' set from its log's first row where the record has none (None: a
    run made before runs recorded it). arms: the lab's arms."""
    check_record(rec, where, fix)
    if rec['arm'] not in arms:
        raise ValueError(f"{where}: arm {shown(rec['arm'])} is not one of this lab's "
                         f"({', '.join(arms)}); {fix}")
    where = f"{where} ('{rec['arm']}', {'+'.join(rec['views'])})"
    if 'rows' not in rec:
        raise ValueError(f"{where} has no 'rows'; {fix}")
    metric = 'exact_match' if rec['fingerprint']['settings'].get('dataset') == 'toy' else 'rougeL'
    check_rows(rec['rows'], where, rec['max_iters'], metric, fix)
    setup = rec.get('setup', rec['rows'][0].get('setup'))
    if setup is not None and not (isinstance(setup, dict) and
                                  all(isinstance(v, (str, int)) for v in setup.values())):
        raise ValueError(f"{where}: 'setup' is {shown(setup)}, not what train.py records; {fix}")
    if setup and setup.get('dtype', 'float32') != 'float32':
        raise ValueError(f"{where} was trained in {shown(setup['dtype'])}, not float32, so it is "
                         f"another experiment (labs train in float32 on every device: "
                         f"config/lab_toy.py); make it again with this code")
    return {**rec, 'setup': setup}


def read_share(path, lab, arms):
    """A share_s<seed>.json (shares.write_shares) of lab `lab`: its runs, each checked
    (check_run)."""
    share = load_json(path, SHARE_FIX)
    if share is None:
        raise ValueError(f"{path} is gone: it was removed while the pool read the folder")
    if not isinstance(share, dict):
        raise ValueError(f"{path} is a JSON {type(share).__name__}, not a share (an object with "
                         f"'lab' and 'runs'); {SHARE_FIX}")
    for key, kind, what in (('lab', str, 'a lab name'), ('runs', list, 'a list of runs')):
        if key not in share:
            raise ValueError(f"{path} has no '{key}', so it is not a share; {SHARE_FIX}")
        if not isinstance(share[key], kind):
            raise ValueError(f"{path}: '{key}' is {shown(share[key])}, not {what}; {SHARE_FIX}")
    if share['lab'] != lab:
        raise ValueError(f"{path} is a share of lab {shown(share['lab'])}, not '{lab}'; pool it "
                         f"with --lab={share['lab']}")
    if not share['runs']:
        raise ValueError(f"{path} holds no runs; {SHARE_FIX}")
    runs, place = [], {}
    for i, rec in enumerate(share['runs'], 1):
        runs.append(check_run(rec, f"{path}, run {i}", arms, SHARE_FIX))
        other = place.setdefault((rec['arm'], tuple(rec['views'])), i)
        if other != i:
            raise ValueError(f"{path}: runs {other} and {i} are both its '{rec['arm']}' run "
                             f"({'+'.join(rec['views'])}), which a share holds once; {SHARE_FIX}")
    mine = os.path.realpath(path).startswith(os.path.realpath(PUBLISHED) + os.sep)
    for rec in [] if mine else runs:  # a published share pools only from where it is published
        if published(lab).get((rec['seed'], rec['arm'], tuple(rec['views']))) == rec['rows']:
            raise ValueError(f"{path} is a copy of our published share of seed {rec['seed']} "
                             f"(labs/results/*/shares/): a class pools its own runs, made on "
                             f"seeds of its own; run your seed, or take it out of the folder")
    return runs


def read_run_folder(folder, arms):
    """A finished run's folder of a lab handed in whole: its run.json and log.jsonl, checked."""
    log = os.path.join(folder, 'log.jsonl')
    rec = read_record(os.path.join(folder, 'run.json'))
    if not os.path.isfile(log):
        raise ValueError(f"{folder} has a run.json but no log.jsonl (a regular file: the run's "
                         f"rows); {RUN_JSON_FIX}")
    try:
        rows = read_log(folder)
    except RecursionError:
        raise ValueError(f"{log} is nested too deep to be a log train.py wrote; "
                         f"{RUN_JSON_FIX}") from None
    return check_run({**rec, 'rows': rows}, os.path.join(folder, 'run.json'), arms, RUN_JSON_FIX)


def left_out(error, strict, say):
    """A file that fails a check: an error (strict), or one line, and the pool goes on."""
    if strict:
        raise error
    say(f"left out: {error}")


def handed_in(top, lab_name, lab, strict=True, say=print, own=None):
    """Every finished run of lab `lab_name` (lab: its entry of labs.LABS) under the folder top:
    [(where it came from, [its records, each with 'rows' and 'setup'])], one entry per share and
    one per seed of a full lab's run folders (those of a seed whose share lies in its lab's folder
    left out: the share holds them). A file named share_*.json is read and checked; one that fails,
    a seed handed in twice, or nothing at all is a ValueError (strict) or a line said and left out.
    A file only named like a share gets a line; other files are counted (but the pool's own
    results in `own`, its out_dir)."""
    arms = [*lab['arms'], *(['base'] if 'base' in lab else [])]
    found, bad, other = {}, set(), 0
    ours = own and os.path.realpath(own)
    for where, dirs, files in walk(top, say):
        is_run = 'run.json' in files
        for name in files:
            path = os.path.join(where, name)
            if SHARE.fullmatch(name):
                try:
                    found[path] = read_share(path, lab_name, arms)
                except ValueError as e:
                    left_out(e, strict, say)
            elif name.lower().startswith('share'):
                say(f"ignored {path}: named like a share, but a share is share_s<seed>.json")
            elif not is_run and not (os.path.realpath(where) == ours and
                                     name.removesuffix('.tmp') in OURS):
                other += 1
        seed = RUN_FOLDER.fullmatch(os.path.basename(where))
        lab_dir = os.path.dirname(os.path.dirname(where))  # runs lie in lab_dir/<arm>/s<seed>...
        if not is_run or (seed and os.path.isfile(os.path.join(lab_dir,
                                                               f'share_s{seed[1]}.json'))):
            continue
        try:
            rec = read_run_folder(where, arms)
        except ValueError as e:
            left_out(e, strict, say)
            if seed:  # the rest of that seed's runs in that lab go too
                bad.add(f"{lab_dir} (seed {int(seed[1])}'s run folders)")
            continue
        found.setdefault(f"{lab_dir} (seed {rec['seed']}'s run folders)", []).append(rec)
    for group in bad:
        found.pop(group, None)
    if other:
        say(f"ignored {other} other file(s) in {top} (not share_*.json nor a run folder)")
    source = {}
    for where, recs in list(found.items()):
        seeds = {r['seed'] for r in recs}
        twice = [(s, source[s]) for s in sorted(seeds) if source.get(s, where) != where]
        if twice:
            left_out(ValueError(f"seed {twice[0][0]} is handed in twice: {twice[0][1]} and "
                                f"{where}; keep one of them"), strict, say)
            del found[where]
            continue
        source.update(dict.fromkeys(seeds, where))
    if strict and not found:
        raise ValueError(f"--pool={top}: no share_*.json and no finished run folder in it (nor in "
                         f"the folders in it); put the shares handed in there")
    return list(found.items())


def describe(setup):
    """A run's setup in words: 'cpu, float32, 2 threads, torch 2.13.0+cpu, Linux 6.18, AMD EPYC'."""
    if not setup:
        return 'not recorded'
    threads = setup.get('threads')
    parts = [setup.get('device'), setup.get('dtype'),
             None if threads is None else f"{threads} thread{'' if threads == 1 else 's'}",
             None if setup.get('torch') is None else f"torch {setup['torch']}",
             setup.get('os'), setup.get('processor')]
    return ', '.join(str(p) for p in parts if p is not None)


def setups(found):
    """What the pooled runs ran on: one {'setup', 'shares'} per distinct setup (describe), with how
    many shares (or a lab's run folders of a seed) hold a run made on it, most first. A share made
    before runs recorded their setup counts under 'not recorded'."""
    count = {}
    for _, recs in found:
        for setup in dict.fromkeys(describe(r.get('setup')) for r in recs):
            count[setup] = count.get(setup, 0) + 1
    return [{'setup': s, 'shares': n} for s, n in sorted(count.items(), key=lambda c: -c[1])]


def snapshot(top):
    """{path: (mtime, size)} of every file under top a pool reads (share-like names, run.json,
    log.jsonl): when it changes, something was handed in. Nothing is opened."""
    state = {}
    for where, _, files in walk(top):
        for name in files:
            if name.lower().startswith('share') or name in ('run.json', 'log.jsonl'):
                path = os.path.join(where, name)
                try:
                    st = os.stat(path) if os.path.exists(path) else os.lstat(path)
                except OSError:
                    continue  # removed while listed
                state[path] = (st.st_mtime_ns, st.st_size)
    return state
