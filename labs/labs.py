"""
Labs: a grid of train.py runs (arms x seeds), each arm compared with its lab's baseline two ways.
The handouts (what each lab asks, how long it takes, what we measured) are in labs/README.md.

    python labs/labs.py --lab=methods --jobs=2           # causal vs Bitune vs BAI vs both, operation after the data
    python labs/labs.py --lab=op_before --jobs=2         # the same with the operation before the data
    python labs/labs.py --lab=bitune_ablations --jobs=2  # Bitune's variants (arXiv 2405.14862, its ablation table)
    python labs/labs.py --lab=mixing --jobs=2            # Bitune's learned vs fixed mixing, and theta_init
    python labs/labs.py --lab=bai_settings --jobs=2      # BAI's pivot layer and lambda (arXiv 2408.13959)
    python labs/labs.py --lab=bitune_bai --jobs=2        # Bitune + BAI: pivots from Pass A or B, a layer, the loss
    python labs/labs.py --lab=finetune --jobs=2          # pretrain on copy, then LoRA/DoRA/IA3, causal vs Bitune, on the other ops
    python labs/labs.py --lab=methods --quick --jobs=2   # a small grid (QUICK below): checks a lab runs; its
                                                         # results do not carry the full lab's lessons
    python labs/labs.py --lab=methods --seeds=1,2 --max_iters=100 --n_layer=2   # any other --key=value reaches every run

Two views of every lab:
- equal steps: every arm trains max_iters iterations (config/lab_toy.py: 500 at batch 64).
- equal compute: every arm gets the same budget of token-forwards, the costliest arm's at max_iters;
  an arm that reads fewer tokens per step trains proportionally more iterations. An arm as costly
  as the budget's runs once, and that run serves both views.
A run's token-forwards after `iter` iterations are counted, not measured:
    iter x batch_size x gradient_accumulation_steps x (mean prompt + answer length of the training set) x cost
with cost = token-forwards per step relative to causal (cost() below; Bitune reads the prompt prefix twice).
Padding is not counted, and neither is evaluation.

Every arm is compared with its lab's baseline (--baseline=ARM picks another) on the same seeds: the
mean paired difference with a 95% t-interval and a verdict (labs/stats.py). Each run evaluates at
iteration 0 and --evals=5 more times, for the learning curves; an evaluation generates answers for all
eval_examples, so it costs time (in elapsed_s and the wall-time curves) but no training.

Runs land in out_dir/<arm>/s<seed>/, and s<seed>_equal_compute/ where that view needs a longer run
(default out_dir: labs/runs/<lab>, or labs/runs/<lab>_quick). Results in out_dir: results.md (tables),
results.json (every number), results_forest.png (each arm's paired difference with its interval, both
views), results.png (final scores, each seed linked across arms), results_curves.png (exact match
against token-forwards, one panel per arm, and wall time); labs/report.py FOLDER redraws them.

Stopping and reusing. Ctrl-C (or SIGTERM) stops the running runs, starts no other, and says how many
are kept; the same command continues. A run is reused only if it finished with the same fingerprint:
its resolved settings (a config file's values, not its path) and a hash of the method code (CODE);
out_dir/<arm>/s<seed>/run.json holds it, written when the run ends well. Any other run starts over,
and as train.py is deterministic it ends with the numbers it would have had uninterrupted. One
labs.py at a time per out_dir (out_dir/lock).

A class: each student runs one seed, perhaps only some arms, and hands in one small file:
    python labs/labs.py --lab=methods --seeds=14 --arms=causal,bitune   # the baseline must be among --arms
    -> labs/runs/methods/share_s14.json
A share holds, for each run of that seed: its arm, views, max_iters, tokens_per_step, cost, fingerprint
(settings + code hash) and every evaluation row of its log; every lab writes one per seed. The runs of
--arms are the whole lab's (the equal-compute budget is still the costliest arm's of the whole lab), so
they are the runs a full lab makes on that seed. The teacher pools them:
    python labs/labs.py --lab=methods --pool=handed_in/   # every share_s*.json (or full lab folder) under it
into the same tables, with the seeds found, in handed_in/ (or --out_dir). A share made with other
settings or code, or a seed handed in twice, is refused, naming the file.
"""
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # runs start here, where train.py is
sys.path.insert(0, ROOT)  # train.py, bitune.py, and this folder as the package `labs`
from configurator import configure  # noqa: E402
from utils.runtime import atomic_file, run_main  # noqa: E402
from labs import report, stats  # noqa: E402

# BAI's arms in labs 1 and 2 take their pivots after ln_f (bai_layer=-1), as BAI's summary reads; lab 4
# compares that with the default, the block before the last.
METHODS = {'causal': {'method': 'causal'}, 'bitune': {'method': 'bitune'}, 'bai': {'method': 'bai', 'bai_layer': -1},
           'bitune_bai': {'method': 'bitune_bai', 'bai_layer': -1}}
# A lab: 'arms' (name -> train.py settings), the 'baseline' arm every other is compared with, settings
# for 'every' arm, and optionally: 'versus' (arm -> the arm it is compared with instead of the baseline),
# 'max_iters' (the arms' equal-steps length, if not the config's), and a 'base' run per seed that every
# arm of that seed fine-tunes from (its checkpoint becomes their init_from; it trains the config's
# max_iters and is the same for all arms, so its compute is not counted).
LABS = {
    # Where does reading the prompt both ways help? With the op after the data a causal model reads
    # the data before it knows what to do with it; with the op before, it knows from the start.
    'methods': {'arms': METHODS, 'baseline': 'causal'},
    'op_before': {'arms': METHODS, 'baseline': 'causal', 'every': {'toy_op_position': 'before'}},
    # Which part of Bitune matters? Each variant against the full method (bitune.VARIANTS: pass A's
    # mask and adapter, pass B, the mixing). The sixth variant, 'fixed', is the mixing lab's
    # 'fixed alpha 0.5' arm: the same command, so the same runs; it is left out here to save 10 minutes.
    'bitune_ablations': {'arms': {v: {'method': 'bitune', 'bitune_variant': v}
                                  for v in ('full', 'naive', 'no_mixing', 'only_causal', 'shared')},
                         'baseline': 'full'},
    # Learned or fixed mixing? theta_init is both theta's start and the constant in alpha = |t| / (|t| + t0),
    # so it sets how fast alpha can move away from 0.5 (Bitune's paper); every arm costs the same.
    'mixing': {'arms': {'learned, theta_init 0.01': {'method': 'bitune'},
                        'fixed alpha 0.5': {'method': 'bitune', 'bitune_variant': 'fixed'},
                        'learned, theta_init 0.1': {'method': 'bitune', 'bitune_theta_init': 0.1},
                        'learned, theta_init 0.001': {'method': 'bitune', 'bitune_theta_init': 0.001}},
               'baseline': 'learned, theta_init 0.01'},
    # BAI one factor at a time: the pivot layer at lambda 1, then lambda at the final layer.
    # lambda = 0 is exactly the causal baseline (bai.compute_loss skips the loss), hence that arm.
    'bai_settings': {'arms': {
        'causal (lambda 0)': {'method': 'causal'},
        **{f'layer {layer}, lambda 1': {'method': 'bai', 'bai_layer': layer} for layer in (-1, 0, 1, 2)},
        'layer -1, lambda 0.1': {'method': 'bai', 'bai_layer': -1, 'bai_lambda': 0.1},
        'layer -1, lambda 3': {'method': 'bai', 'bai_layer': -1, 'bai_lambda': 3.0}},
        'baseline': 'causal (lambda 0)'},
    # Why does Bitune + BAI lose to Bitune? One change at a time to where its pivots come from
    # (train.py's bai_pivots and bai_layer) and to the loss that compares them with the answer.
    'bitune_bai': {'arms': {'bitune': {'method': 'bitune'},
                            'bitune_bai (A, ln_f, mse)': {'method': 'bitune_bai', 'bai_layer': -1},
                            'cosine': {'method': 'bitune_bai', 'bai_layer': -1, 'bai_loss': 'cosine'},
                            'layer 2': {'method': 'bitune_bai', 'bai_layer': 2},
                            'pass B': {'method': 'bitune_bai', 'bai_layer': -1, 'bai_pivots': 'B'}},
                   'baseline': 'bitune'},
    # The papers' setting in miniature: a base that knows the format (fully trained on copy only, the
    # config's 500 iterations), then 300 iterations of parameter-efficient tuning on new operations, one
    # causal and one Bitune arm per adapter kind (adapters.py). Bitune trains two adapters, so the causal
    # LoRA and DoRA arms get rank 16, as many numbers as Bitune's two of rank 8; IA3 has no rank to
    # double. Each Bitune arm is compared with the causal arm of its own kind ('versus').
    # LoRA usually wants a higher learning rate than full training; IA3 trains ~20x fewer numbers than
    # LoRA and wants a far higher one, chosen by a sweep of ia3_causal at 500 steps on seed 4 (then
    # outside the lab's 3 seeds; now one of its 5, so that seed's ia3 arms are not independent of the
    # choice; the handout has the sweep).
    'finetune': {'base': {'method': 'causal', 'peft': 'none', 'toy_ops': 'C'}, 'max_iters': 300,
                 'every': {'peft': 'lora', 'toy_ops': 'RSD', 'learning_rate': 3e-3},
                 'arms': {'lora_causal_r16': {'method': 'causal', 'lora_r': 16, 'lora_alpha': 16},
                          'lora_bitune': {'method': 'bitune'},
                          'dora_causal_r16': {'method': 'causal', 'peft': 'dora', 'lora_r': 16, 'lora_alpha': 16},
                          'dora_bitune': {'method': 'bitune', 'peft': 'dora'},
                          'ia3_causal': {'method': 'causal', 'peft': 'ia3', 'learning_rate': 0.3},
                          'ia3_bitune': {'method': 'bitune', 'peft': 'ia3', 'learning_rate': 0.3}},
                 'baseline': 'lora_causal_r16',
                 'versus': {'dora_bitune': 'dora_causal_r16', 'ia3_bitune': 'ia3_causal'}},
}
# --quick: for a class to run live. A smaller model on shorter strings (4 to 8 symbols) at a higher
# learning rate, fewer evaluation examples, three seeds (the fewest that give a usable interval, and a
# wide one), and a lower target, since its runs end further from 100%.
QUICK = {'seeds': '1,2,3', 'max_iters': '500', 'target': '50',
         'settings': {'n_layer': 2, 'n_embd': 64, 'toy_max_len': 8, 'learning_rate': 3e-3, 'warmup_iters': 30,
                      'eval_examples': 200}}
CONFIG = os.path.join(ROOT, 'config', 'lab_toy.py')


# labs.py's own options: their defaults and an example of a good value, for the error lines
OPTIONS = {'lab': (None, 'methods'), 'seeds': (None, '1,2,3'), 'max_iters': (None, '500'), 'out_dir': (None, 'labs/runs/mine'),
           'jobs': ('1', '2'), 'quick': ('False', 'True'), 'baseline': (None, 'causal'), 'target': (None, '80'),
           'evals': ('5', '5'), 'arms': (None, 'causal,bitune'), 'pool': (None, 'handed_in')}
TRUE, FALSE = ('True', 'true', '1'), ('False', 'false', '0')


def folder(arm):
    """An arm's name as a folder name, and as --arms takes it: 'layer -1, lambda 1' -> layer_-1_lambda_1."""
    return arm.replace(',', '').replace(' ', '_')


def bad(key, value, why):
    """The error for one option: what was wrong, and an example of a good value."""
    return ValueError(f"--{key}={value}: {why}; write e.g. --{key}={OPTIONS[key][1]}")


def whole(key, value, least=1):
    """An option that is a whole number >= least."""
    try:
        n = int(value)
    except ValueError:
        raise bad(key, value, 'not a whole number') from None
    if n < least:
        raise bad(key, value, f'must be at least {least}')
    return n


def parse_args(argv):
    """labs.py's own options, each checked (one error line that names it), and every other --key=value
    (passed on to every run, checked by train.py's configurator in plan())."""
    if '--help' in argv or '-h' in argv:
        print(__doc__.strip())
        sys.exit(0)
    opts, given, passthrough = {k: d for k, (d, _) in OPTIONS.items()}, set(), []
    for arg in argv:
        key, eq, value = arg[2:].partition('=')
        if arg.startswith('--') and key in opts:
            if eq and not value:
                raise bad(key, '', 'is empty')
            opts[key] = value if eq else 'True'  # a bare flag: --quick
            given.add(key)
        elif key in ('seed', 'eval_interval'):
            instead = '--seeds=1,2,3' if key == 'seed' else '--evals=N (evaluations per run)'
            raise ValueError(f"{arg}: labs.py sets each run's {key}; use {instead}")
        else:
            passthrough.append(arg)
    if opts['lab'] not in LABS:
        raise bad('lab', opts['lab'] or '', f"choose one of {', '.join(LABS)}")
    lab = LABS[opts['lab']]
    if opts['quick'] not in TRUE + FALSE:
        raise bad('quick', opts['quick'], 'write True or False (or just --quick)')
    quick = opts['quick'] in TRUE
    if opts['pool'] is not None and not os.path.isdir(opts['pool']):
        raise bad('pool', opts['pool'], 'not a folder; name the folder that holds the share_s*.json files')
    if opts['pool'] is not None and 'seeds' in given:
        raise bad('seeds', opts['seeds'], 'pooling takes the seeds it finds in --pool; leave --seeds out')
    text = opts['seeds'] or (QUICK['seeds'] if quick else '1,2,3,4,5')
    seeds = [int(s) if s.isdigit() else None for s in text.split(',')]
    if None in seeds or len(set(seeds)) != len(seeds):
        raise bad('seeds', text, 'whole numbers >= 0, separated by commas, none repeated')
    jobs, evals = whole('jobs', opts['jobs']), whole('evals', opts['evals'])
    max_iters = opts['max_iters'] or (QUICK['max_iters'] if quick else None)
    if max_iters is not None:
        whole('max_iters', max_iters)
    try:
        target = float(opts['target'] or (QUICK['target'] if quick else '80'))
    except ValueError:
        raise bad('target', opts['target'], 'not a number') from None
    if not 0 <= target <= 100:
        raise bad('target', opts['target'], 'a score in percent, 0 to 100')
    named = {folder(a): a for a in lab['arms']}  # 'learned, theta_init 0.1' is written learned_theta_init_0.1
    arms = [named.get(folder(a)) for a in opts['arms'].split(',')] if opts['arms'] else list(lab['arms'])
    if None in arms or len(set(arms)) != len(arms):
        raise bad('arms', opts['arms'], f"name each of lab '{opts['lab']}'s arms once, from {', '.join(named)}")
    baseline = opts['baseline'] or lab['baseline']
    if baseline not in lab['arms']:
        raise bad('baseline', baseline, f"choose one of the lab's arms: {', '.join(lab['arms'])}")
    if baseline not in arms:
        raise bad('arms', opts['arms'], f"the baseline '{baseline}' must be among them: every arm is compared with it")
    default_out = opts['pool'] or os.path.join(ROOT, 'labs', 'runs', opts['lab'] + ('_quick' if quick else ''))
    out_dir = os.path.abspath(opts['out_dir'] or default_out)  # the runs start in ROOT
    return {**opts, 'seeds': seeds, 'jobs': jobs, 'evals': evals, 'target': target, 'quick': quick, 'arms': arms,
            'baseline': baseline, 'out_dir': out_dir, 'max_iters': max_iters}, passthrough


def plan(opts, passthrough):
    """The lab's runs: dicts with arm, seed, stage (0 = bases), views ('steps', 'compute', or both),
    out_dir, argv for train.py, tokens_per_step, its config, resolved here with train.py's own defaults
    so that a typo fails before any run starts, and its fingerprint. Only the arms in opts['arms'] are
    planned, but the equal-compute budget is always the whole lab's, so a run is the same whichever
    arms a command asks for."""
    from model import has_hidden_layer
    from train import DEFAULTS
    lab = LABS[opts['lab']]
    first = [CONFIG, *[f'--{k}={v}' for k, v in QUICK['settings'].items() if opts['quick']]]

    def make(arm, settings, seed, stage, views, iters, where, base=None):
        out = os.path.join(opts['out_dir'], folder(arm), where)
        # --evals evaluations after the one at iteration 0 (rounding up: never one more just before the end)
        argv = [*first, *[f'--{k}={v}' for k, v in settings.items()], *passthrough, f'--max_iters={iters}',
                f"--eval_interval={-(-iters // opts['evals'])}", f'--seed={seed}', f'--out_dir={out}']
        cfg = configure(DEFAULTS, argv)
        return {'arm': arm, 'seed': seed, 'stage': stage, 'views': views, 'out_dir': out, 'argv': argv,
                'cfg': cfg, 'tokens_per_step': tokens_per_step(cfg), 'fingerprint': fingerprint(cfg, base)}

    common = configure(DEFAULTS, [*first, *passthrough])
    base_iters = int(opts['max_iters'] or common['max_iters'])
    max_iters = int(opts['max_iters'] or lab.get('max_iters') or common['max_iters'])
    arms = {arm: {**lab.get('every', {}), **settings} for arm, settings in lab['arms'].items()}
    # each arm's settings as its runs will have them (seed 0 here: the seed changes no cost)
    probe = {arm: make(arm, s, 0, 1, (), max_iters, '') for arm, s in arms.items()}
    for arm, p in probe.items():  # e.g. BAI's pivots from block 2 of the quick 2-block model
        c = p['cfg']
        if 'bai' in c['method'] and not has_hidden_layer(c['bai_layer'], c['n_layer']):
            print(f"leaving out '{arm}': bai_layer={c['bai_layer']} is not a layer of a {c['n_layer']}-block model")
            del arms[arm]
    # the budget: what the costliest arm reads in max_iters iterations
    per_step = {arm: probe[arm]['tokens_per_step'] for arm in arms}
    budget = max_iters * max(per_step.values())
    # the costliest arm's runs serve both views: their length is max_iters, their compute the budget
    opts['budget'] = {'arm': max(per_step, key=per_step.get), 'token_forwards': budget, 'max_iters': max_iters}
    runs, base = [], None
    for seed in opts['seeds']:
        if 'base' in lab:
            runs.append(make('base', lab['base'], seed, 0, (), base_iters, f's{seed}'))
            base = runs[-1]['fingerprint']
            base_ckpt = os.path.join(runs[-1]['out_dir'], 'ckpt.pt')
        for arm in [a for a in opts['arms'] if a in arms]:
            settings = arms[arm]
            if 'base' in lab:  # fine-tune from the same seed's base
                settings = {**settings, 'init_from': base_ckpt}
            iters = round(budget / per_step[arm])
            if iters == max_iters:
                runs.append(make(arm, settings, seed, 1, ('steps', 'compute'), max_iters, f's{seed}', base))
            else:
                runs.append(make(arm, settings, seed, 1, ('steps',), max_iters, f's{seed}', base))
                runs.append(make(arm, settings, seed, 1, ('compute',), iters, f's{seed}_equal_compute', base))
    return runs


# The files whose edits change a run's numbers: train.py and what it imports (utils/plot.py draws only)
CODE = ('train.py', 'configurator.py', 'model.py', 'adapters.py', 'bitune.py', 'bai.py', 'data/tasks.py',
        'data/prepare_common.py', 'data/toy/toy.py', 'utils/checkpoint.py', 'utils/evaluate.py',
        'utils/distributed.py', 'utils/weights.py')
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
    """What a run's numbers depend on: its resolved settings (a config file's values, not its path; every
    setting but PLACES, and data_dir only where the data is read from it) and the hash of the code.
    base: the fingerprint of the run whose checkpoint init_from names, which stands for that path, so
    that the same base trained in another folder (another student's) gives the same fingerprint."""
    settings = {k: v for k, v in sorted(cfg.items()) if k not in PLACES}
    if settings['dataset'] == 'toy':  # generated from the toy_* settings; no folder is read
        del settings['data_dir']
    if base is not None:
        settings['init_from'] = base
    return {'settings': settings, 'code': code_hash()}


def read_log(out_dir, name='log.jsonl'):
    """The rows of a run's JSON-lines file ([] if there is none yet)."""
    path = os.path.join(out_dir, name)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:  # only a run killed mid-write leaves a broken line, and only the last
                raise ValueError(f"{path}, line {i + 1}, is not JSON; delete that run's folder to run it again") from None
    return rows


def last_row(out_dir, name='log.jsonl'):
    rows = read_log(out_dir, name)
    return rows[-1] if rows else None


def read_json(path):
    """A JSON file's contents, or None if there is none."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_json(path, obj):
    with atomic_file(path) as f:  # a stop never leaves half a file under the real name
        json.dump(obj, f)


def record(run):
    """What a run is, without its rows: the file run.json in its folder, and its entry in a share."""
    return {'arm': run['arm'], 'seed': run['seed'], 'views': list(run['views']), 'max_iters': run['cfg']['max_iters'],
            'tokens_per_step': run['tokens_per_step'], 'cost': cost(run['cfg']), 'fingerprint': run['fingerprint']}


def logged_to_the_end(run):
    row = last_row(run['out_dir'])
    return row is not None and row['iter'] == run['cfg']['max_iters']


def finished(run):
    """Done with the same settings and code. run.json is written only after the run has ended well, and
    removed before it starts again, so a stopped or failed run is never mistaken for a finished one."""
    done = read_json(os.path.join(run['out_dir'], 'run.json'))
    return done is not None and done['fingerprint'] == run['fingerprint'] and logged_to_the_end(run)


def die_with_parent():
    """For Linux: a function the child runs before train.py that asks the kernel to SIGKILL it when
    labs.py dies, however it dies (SIGKILL runs no handler of ours; prctl PR_SET_PDEATHSIG = 1 does not
    need one). Without it a killed lab would leave its runs training, unwatched, for an hour. Where
    prctl is missing (macOS, Windows) None: only a stop labs.py sees (Ctrl-C, SIGTERM) stops its runs."""
    if not sys.platform.startswith('linux'):
        return None
    import ctypes
    prctl = getattr(ctypes.CDLL(None, use_errno=True), 'prctl', None)
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec():  # in the forked child; launch() runs in labs.py's only thread, whose death it watches
        prctl(1, signal.SIGKILL)
        if os.getppid() != parent:  # labs.py died before the line above took effect
            os._exit(1)
    return preexec


def launch(run, threads):
    """Start one run in its own process (nothing shared; a crash stays contained) and its own process
    group (stop() ends it with whatever it started), its output in out_dir/train.txt. A run that did not
    finish with these settings starts over in its folder: --overwrite=True. train.py is deterministic,
    so a restarted run ends with the numbers an uninterrupted one has; its log is written afresh."""
    os.makedirs(run['out_dir'], exist_ok=True)
    if os.path.exists(os.path.join(run['out_dir'], 'run.json')):
        os.remove(os.path.join(run['out_dir'], 'run.json'))  # until it ends well, it is not finished
    env = {**os.environ, 'OMP_NUM_THREADS': str(threads), 'MKL_NUM_THREADS': str(threads)}
    with open(os.path.join(run['out_dir'], 'train.txt'), 'w') as log:  # the child keeps its own copy open
        return subprocess.Popen([sys.executable, 'train.py', *run['argv'], '--overwrite=True'], stdout=log,
                                stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True,
                                preexec_fn=die_with_parent())


def stop(procs, grace=5.0):
    """End these runs' process groups: SIGTERM, then SIGKILL for any still there after `grace` seconds."""
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
    Ctrl-C or SIGTERM stops the running runs, starts no other, and exits (130) with one line that says
    what is kept and that `again`, the same command, continues the lab."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    threads = max(1, cores // jobs)  # N runs of cores/N threads: the cores are shared, never oversubscribed
    # the longest runs first, so no job idles at the end waiting for a long one
    todo = sorted((r for r in runs if not finished(r)),
                  key=lambda r: (r['stage'], -r['cfg']['max_iters'] * r['tokens_per_step']))
    print(f"{len(runs)} runs, {len(runs) - len(todo)} of them reused from earlier (same settings and code); "
          f"{jobs} at a time, {threads} thread(s) each")
    failed, running, signals = [], {}, []
    handlers = {s: signal.signal(s, lambda signum, frame: signals.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    tqdm.monitor_interval = 0  # no monitor thread: launch() forks, and a fork is safe only in a one-thread process
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
                tqdm.write(f"{r['arm']} seed {r['seed']} ({r['cfg']['max_iters']} it): "
                           f"{'failed, see its train.txt' if r in failed else 'done'} in {time.time() - started:.0f}s "
                           f"-> {r['out_dir']}")
                bar.update()
            time.sleep(0.05)
    finally:  # a signal, or labs.py's own failure: no run outlives it
        stop(list(running))
        for s, h in handlers.items():
            signal.signal(s, h)
        bar.close()
    if signals:
        print(f"stopped: {len(runs) - len(todo) - len(running) - len(failed)} of {len(runs)} runs are finished and "
              f"kept, {len(running)} were stopped, {len(failed)} failed and {len(todo)} not started (they run next "
              f"time); to continue, run the same command: {again}", file=sys.stderr)
        sys.exit(130)
    print(f"total {time.time() - t0:.0f}s")
    return failed


_LENGTHS = {}  # (prompt, answer) lengths of a training set, by the settings that make it


def train_lengths(cfg):
    """(P, A) per training example, from the same call as train.py's; every arm of a lab asks."""
    from data import tasks
    key = tuple(sorted((k, v) for k, v in cfg.items() if k.startswith('toy_') or k in ('dataset', 'data_dir')))
    if key not in _LENGTHS:
        task = tasks.task_from_config(cfg)  # the same task train.py builds from these settings
        _LENGTHS[key] = [(len(ex['prompt']), len(ex['answer'])) for ex in task['train']]
    return _LENGTHS[key]


def cost(cfg):
    """Token-forwards per training step relative to causal, on the run's own training data. Causal and
    BAI read T = P + A tokens per example; Bitune reads the prefix (P-1 tokens) in Pass A, again in
    Pass B (variants that have one), and the last prompt token + answer (A+1 = T-P+1) in Pass C.
    BAI's extra attention of the answer over the prompt is tiny and not counted."""
    if not cfg['method'].startswith('bitune'):
        return 1.0
    from bitune import VARIANTS
    lengths = train_lengths(cfg)
    passes = 2 if VARIANTS[cfg['bitune_variant']][2] else 1
    return sum(passes * (p - 1) + a + 1 for p, a in lengths) / sum(p + a for p, a in lengths)


def tokens_per_step(cfg):
    """Token-forwards of one training step: examples per step x their mean length x cost."""
    lengths = train_lengths(cfg)
    mean_length = sum(p + a for p, a in lengths) / len(lengths)
    return cfg['batch_size'] * cfg['gradient_accumulation_steps'] * mean_length * cost(cfg)


def scores_of(row):
    """The task metrics of a log row: exact match (overall and per op) or ROUGE."""
    return {k: v for k, v in row.items() if k == 'exact_match' or k.startswith(('em_', 'rouge'))}


def rows_of(run):
    """A finished run's evaluation rows, handed in with it (a share, see pool()) or from its log;
    None while it is unfinished (it has no final score)."""
    if 'rows' in run:
        return run['rows']
    return read_log(run['out_dir']) if finished(run) else None


def aggregate(runs, opts):
    """Every number of the lab, from the finished runs' rows (rows_of): per arm, its cost and, for each
    view, the runs' final scores, their summary over seeds and the paired comparison with the baseline;
    its learning curve (equal-compute runs) and the token-forwards it needs to reach opts['target']."""
    done = [(r, rows) for r in runs if r['arm'] != 'base' for rows in [rows_of(r)] if rows]
    metric = 'exact_match' if 'exact_match' in (done[0][1][-1] if done else {}) else 'rougeL'
    arms = {}
    for r, rows in done:
        arm = arms.setdefault(r['arm'], {'cost': cost(r['cfg']), 'tokens_per_step': r['tokens_per_step'],
                                         'views': {}, 'curves': []})
        for view in r['views']:
            v = arm['views'].setdefault(view, {'iters': r['cfg']['max_iters'], 'runs': []})
            v['runs'].append({'seed': r['seed'], 'elapsed_s': rows[-1]['elapsed_s'], **scores_of(rows[-1])})
        if 'compute' in r['views']:
            arm['curves'].append([(row['iter'], row['elapsed_s'], row[metric]) for row in rows])
    for arm in arms.values():
        for v in arm['views'].values():
            keys = [k for k in v['runs'][0] if k not in ('seed', 'elapsed_s')]
            v['stats'] = {k: stats.summary(run[k] for run in v['runs'] if k in run) for k in keys}
        curves = arm.pop('curves')
        if curves:
            tps = arm['tokens_per_step']
            arm['curve'] = {'tokens': stats.mean_curve([[(it * tps, y) for it, _, y in c] for c in curves]),
                            'wall_s': stats.mean_curve([[(s, y) for _, s, y in c] for c in curves])}
            mean = arm['curve']['tokens']
            reached = [stats.first_crossing([it * tps for it, _, _ in c], [y for _, _, y in c], opts['target'])
                       for c in curves]
            arm['to_target'] = {'token_forwards': stats.first_crossing(mean['x'], mean['mean'], opts['target']),
                                'seeds_reached': sum(x is not None for x in reached), 'seeds': len(curves)}
    versus = LABS[opts['lab']].get('versus', {})
    for name, arm in arms.items():
        ref = versus.get(name, opts['baseline'])  # the arm this one is compared with
        base = arms.get(ref, {'views': {}})
        for view, v in arm['views'].items():
            if name != opts['baseline'] and view in base['views']:
                by_seed = {run['seed']: run[metric] for run in v['runs']}
                v['vs_baseline'] = stats.paired(by_seed, {run['seed']: run[metric] for run in base['views'][view]['runs']})
                v['vs_baseline']['arm'] = ref
    return {'lab': opts['lab'], 'metric': metric, 'baseline': opts['baseline'], 'target': opts['target'],
            'seeds': opts['seeds'], 'max_iters': opts['budget']['max_iters'],
            'budget': {k: opts['budget'][k] for k in ('arm', 'token_forwards')},
            'arms': {name: arms[name] for name in LABS[opts['lab']]['arms'] if name in arms}}


def alive(pid):
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def take_lock(out_dir):
    """One labs.py per out_dir: out_dir/lock holds its pid, created atomically (O_CREAT | O_EXCL), so two
    labs.py never run (and overwrite) the same runs. A lock whose labs.py has died is taken over."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, 'lock')
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                with open(path) as f:
                    text = f.read().strip()
            except FileNotFoundError:
                continue  # its owner has just removed it
            if not text.isdigit() and time.time() - os.path.getmtime(path) < 10:
                text = str(os.getpid())  # just created, its pid not yet written: the owner is alive
            if text.isdigit() and alive(int(text)):
                raise ValueError(f"{out_dir} is in use by another labs.py (pid {text}); wait for it to end or "
                                 f"stop it, or choose another --out_dir")
            os.remove(path)  # its owner has died: take it over
            continue
        with os.fdopen(fd, 'w') as f:
            f.write(str(os.getpid()))
        return path


def release(path):
    with open(path) as f:
        mine = f.read().strip() == str(os.getpid())
    if mine:
        os.remove(path)


def write_shares(runs, opts):
    """out_dir/share_s<seed>.json for every seed whose runs all finished: what a student hands in. Per
    run its record (arm, views, max_iters, tokens_per_step, cost, fingerprint) and every evaluation row
    of its log; a few kB, no checkpoints. Returns the paths."""
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


def handed_in(top):
    """Every finished run under the folder top: [(where it came from, its record with 'rows')], from share files
    and from the run folders of full labs (run.json and log.jsonl), those of a seed whose share lies in
    its lab's folder left out (that share holds them)."""
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
            found.append((f"{lab_dir} (seed {rec['seed']}'s run folders)", {**rec, 'rows': read_log(where)}))
    return found


def pool(opts, passthrough):
    """A lab's runs with the rows handed in under opts['pool']: the seeds found, each from one source, every
    run checked against the plan (the same settings and code as this lab's run of that arm and seed)."""
    found, source = handed_in(opts['pool']), {}
    for where, rec in found:
        if rec.get('lab', opts['lab']) != opts['lab']:
            raise ValueError(f"{where} is a share of lab '{rec['lab']}', not '{opts['lab']}'; pool it with --lab={rec['lab']}")
        other = source.setdefault(rec['seed'], where)
        if other != where:
            raise ValueError(f"seed {rec['seed']} is handed in twice: {other} and {where}; keep one of them")
    if not found:
        raise ValueError(f"--pool={opts['pool']}: no share_s*.json and no finished run folders in it")
    opts['seeds'] = sorted(source)
    runs = {(r['arm'], r['seed'], tuple(r['views'])): r for r in plan(opts, passthrough)}
    for where, rec in found:
        r = runs.get((rec['arm'], rec['seed'], tuple(rec['views'])))
        if r is None and (rec['arm'] in opts['arms'] or rec['arm'] == 'base'):
            raise ValueError(f"{where}: its '{rec['arm']}' run of seed {rec['seed']} ({rec['max_iters']} iterations) "
                             f"is not one this lab plans; pool with the options the shares were made with (e.g. --quick)")
        if r is None:
            continue  # an arm this command does not ask for (--arms)
        if rec['fingerprint'] != r['fingerprint']:
            mine, theirs = r['fingerprint']['settings'], rec['fingerprint']['settings']
            diff = [k for k in sorted({*mine, *theirs}) if mine.get(k) != theirs.get(k)]
            what = f"settings ({', '.join(f'{k}={theirs.get(k)!r}, not {mine.get(k)!r}' for k in diff[:3])})" \
                if diff else 'code (its method files differ from these)'
            raise ValueError(f"{where}: its '{rec['arm']}' run of seed {rec['seed']} was made with other {what}; "
                             f"pool only shares of the same command (e.g. --quick) on the same code")
        r['rows'], r['source'] = rec['rows'], where
    return list(runs.values())


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    opts, passthrough = parse_args(argv)
    runs = None if opts['pool'] else plan(opts, passthrough)  # a typo in a setting fails before anything else
    held = take_lock(opts['out_dir'])
    try:
        if opts['pool']:
            runs, failed = pool(opts, passthrough), []
            results = {**aggregate(runs, opts), 'pooled': sorted({r['source'] for r in runs if 'source' in r})}
            note = f"pooled {len(opts['seeds'])} seeds ({', '.join(map(str, opts['seeds']))}) from {opts['pool']}"
        else:
            reused = sum(map(finished, runs))
            failed = run_all(runs, opts['jobs'], again=' '.join(['python labs/labs.py', *map(shlex.quote, argv)]))
            results = {**aggregate(runs, opts), 'runs': len(runs), 'reused': reused}
            note = f"{reused} of {len(runs)} runs reused from earlier (same settings and code)"
            for path in write_shares(runs, opts):
                note += f"\nshare: {path} (hand it in; a teacher pools a folder of shares: python labs/labs.py " \
                        f"--lab={opts['lab']} --pool=FOLDER)"
        lines = report.write_results(results, opts['out_dir'])
    finally:
        release(held)
    print('\n'.join(lines) + f"\n{note}\nwrote {opts['out_dir']}/results.md, results.json, results_forest.png, "
          f"results.png, results_curves.png")
    if failed:
        raise RuntimeError(f"{len(failed)} run(s) failed: {', '.join(r['out_dir'] for r in failed)}; read their "
                           f"train.txt, fix the cause, and run the same command again (finished runs are kept)")
    return runs


if __name__ == '__main__':
    run_main(main, RuntimeError)  # bad options or failed runs: one line `error: ...` that says what to do
