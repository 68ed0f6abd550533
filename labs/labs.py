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
    python labs/labs.py --lab=methods --quick --jobs=2   # a small grid (QUICK below): minutes, not an hour
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
(default out_dir: labs/runs/<lab>, or labs/runs/<lab>_quick). A run whose log already reaches its
max_iters with the same command is skipped, so running a command again resumes the lab.
Results in out_dir: results.md (tables), results.json (every number), results.png (final scores, both
views), results_curves.png (exact match against token-forwards and wall time).
"""
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # runs start here, where train.py is
sys.path.insert(0, ROOT)  # train.py, bitune.py, and this folder as the package `labs`
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


def parse_args(argv):
    """labs.py's own options, and every other --key=value (passed on to every run)."""
    if '--help' in argv or '-h' in argv:
        print(__doc__.strip())
        sys.exit(0)
    opts = {'lab': None, 'seeds': None, 'max_iters': None, 'out_dir': None, 'jobs': '1', 'quick': 'False',
            'baseline': None, 'target': None, 'evals': '5'}
    passthrough = []
    for arg in argv:
        key, eq, value = arg[2:].partition('=')
        if arg.startswith('--') and key in opts:
            opts[key] = value if eq else 'True'  # a bare flag: --quick
        elif key in ('seed', 'eval_interval'):
            instead = '--seeds=1,2,3' if key == 'seed' else '--evals=N (evaluations per run)'
            raise ValueError(f"{arg}: labs.py sets each run's {key}; use {instead}")
        else:
            passthrough.append(arg)
    if opts['lab'] not in LABS:
        raise ValueError(f"--lab={opts['lab']}: choose one of {', '.join(LABS)}")
    lab = LABS[opts['lab']]
    quick = opts['quick'] in ('True', 'true', '1')
    seeds = opts['seeds'] or (QUICK['seeds'] if quick else '1,2,3,4,5')
    target = opts['target'] or (QUICK['target'] if quick else '80')
    try:
        seeds, jobs, evals = [int(s) for s in seeds.split(',')], int(opts['jobs']), int(opts['evals'])
        target = float(target)
    except ValueError:
        raise ValueError(f"--seeds={seeds} --jobs={opts['jobs']} --evals={opts['evals']} --target={target}: "
                         f"write e.g. --seeds=1,2,3 --jobs=2 --evals=5 --target=80") from None
    if jobs < 1 or evals < 1 or len(set(seeds)) != len(seeds):
        raise ValueError("--jobs and --evals must be at least 1, and --seeds must not repeat a seed")
    baseline = opts['baseline'] or lab['baseline']
    if baseline not in lab['arms']:
        raise ValueError(f"--baseline={baseline}: choose one of the lab's arms: {', '.join(lab['arms'])}")
    default_out = os.path.join(ROOT, 'labs', 'runs', opts['lab'] + ('_quick' if quick else ''))
    out_dir = os.path.abspath(opts['out_dir'] or default_out)  # the runs start in ROOT
    max_iters = opts['max_iters'] or (QUICK['max_iters'] if quick else None)
    return {**opts, 'seeds': seeds, 'jobs': jobs, 'evals': evals, 'target': target, 'quick': quick,
            'baseline': baseline, 'out_dir': out_dir, 'max_iters': max_iters}, passthrough


def plan(opts, passthrough):
    """The lab's runs: dicts with arm, seed, stage (0 = bases), views ('steps', 'compute', or both),
    out_dir, argv for train.py, tokens_per_step, and its config, resolved here with train.py's own
    defaults so that a typo fails before any run starts."""
    from configurator import configure
    from model import has_hidden_layer
    from train import DEFAULTS
    lab = LABS[opts['lab']]
    first = [CONFIG, *[f'--{k}={v}' for k, v in QUICK['settings'].items() if opts['quick']]]

    def make(arm, settings, seed, stage, views, iters, folder):
        out = os.path.join(opts['out_dir'], arm.replace(',', '').replace(' ', '_'), folder)
        # --evals evaluations after the one at iteration 0 (rounding up: never one more just before the end)
        argv = [*first, *[f'--{k}={v}' for k, v in settings.items()], *passthrough, f'--max_iters={iters}',
                f"--eval_interval={-(-iters // opts['evals'])}", f'--seed={seed}', f'--out_dir={out}']
        cfg = configure(DEFAULTS, argv)
        return {'arm': arm, 'seed': seed, 'stage': stage, 'views': views, 'out_dir': out, 'argv': argv,
                'cfg': cfg, 'tokens_per_step': tokens_per_step(cfg)}

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
    runs = []
    for seed in opts['seeds']:
        if 'base' in lab:
            runs.append(make('base', lab['base'], seed, 0, (), base_iters, f's{seed}'))
            base_ckpt = os.path.join(runs[-1]['out_dir'], 'ckpt.pt')
        for arm, settings in arms.items():
            if 'base' in lab:  # fine-tune from the same seed's base
                settings = {**settings, 'init_from': base_ckpt}
            iters = round(budget / per_step[arm])
            if iters == max_iters:
                runs.append(make(arm, settings, seed, 1, ('steps', 'compute'), max_iters, f's{seed}'))
            else:
                runs.append(make(arm, settings, seed, 1, ('steps',), max_iters, f's{seed}'))
                runs.append(make(arm, settings, seed, 1, ('compute',), iters, f's{seed}_equal_compute'))
    return runs


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


def finished(run):
    """Done, with this very command: changing a setting re-runs the arm instead of keeping an old result."""
    row = last_row(run['out_dir'])
    same_command = last_row(run['out_dir'], 'argv.json') == run['argv']
    return same_command and row is not None and row['iter'] == run['cfg']['max_iters']


def launch(run, threads):
    """One run in its own process (nothing shared; a crash stays contained), its output in
    out_dir/train.txt. Returns (exit code, seconds)."""
    t0 = time.time()
    os.makedirs(run['out_dir'], exist_ok=True)
    with open(os.path.join(run['out_dir'], 'argv.json'), 'w') as f:
        json.dump(run['argv'], f)  # one line: finished() compares it with the command
    env = {**os.environ, 'OMP_NUM_THREADS': str(threads), 'MKL_NUM_THREADS': str(threads)}
    with open(os.path.join(run['out_dir'], 'train.txt'), 'w') as log:
        # a run that did not finish with this command starts over in its folder: overwrite=True
        rc = subprocess.run([sys.executable, 'train.py', *run['argv'], '--overwrite=True'], stdout=log,
                            stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    return rc, time.time() - t0


def run_all(runs, jobs):
    """Stage by stage (fine-tuning needs its base), `jobs` runs at a time; returns the failed runs."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    threads = max(1, cores // jobs)  # N runs of cores/N threads: the cores are shared, never oversubscribed
    # the longest runs first, so no job idles at the end waiting for a long one
    todo = sorted((r for r in runs if not finished(r)),
                  key=lambda r: (r['stage'], -r['cfg']['max_iters'] * r['tokens_per_step']))
    print(f"{len(runs)} runs, {len(runs) - len(todo)} already finished; {jobs} at a time, {threads} thread(s) each")
    failed, t0, bar = [], time.time(), tqdm(total=len(todo), desc='runs', dynamic_ncols=True)
    for stage in sorted({r['stage'] for r in todo}):
        with ThreadPoolExecutor(jobs) as pool:  # threads only wait here; the work is in the subprocesses
            started = {pool.submit(launch, r, threads): r for r in todo if r['stage'] == stage}
            for fut in as_completed(started):
                r, (rc, secs) = started[fut], fut.result()
                if rc != 0 or not finished(r):
                    failed.append(r)
                tqdm.write(f"{r['arm']} seed {r['seed']} ({r['cfg']['max_iters']} it): "
                           f"{'failed, see its train.txt' if r in failed else 'done'} in {secs:.0f}s -> {r['out_dir']}")
                bar.update()
    bar.close()
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


def aggregate(runs, opts):
    """Every number of the lab, from the finished runs' logs: per arm, its cost and, for each view,
    the runs' final scores, their summary over seeds and the paired comparison with the baseline;
    its learning curve (equal-compute runs) and the token-forwards it needs to reach opts['target']."""
    done = [r for r in runs if r['arm'] != 'base' and finished(r)]  # unfinished runs have no final score
    first = next((read_log(r['out_dir'])[-1] for r in done), {})
    metric = 'exact_match' if 'exact_match' in first else 'rougeL'
    arms = {}
    for r in done:
        arm = arms.setdefault(r['arm'], {'cost': cost(r['cfg']), 'tokens_per_step': r['tokens_per_step'],
                                         'views': {}, 'curves': []})
        rows = read_log(r['out_dir'])
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
    # the costliest arm's runs serve both views: their length is max_iters, their compute the budget
    costliest = max((r for r in runs if r['arm'] != 'base'), key=lambda r: r['tokens_per_step'])
    steps = costliest['cfg']['max_iters']
    return {'lab': opts['lab'], 'metric': metric, 'baseline': opts['baseline'], 'target': opts['target'],
            'seeds': opts['seeds'], 'max_iters': steps,
            'budget': {'arm': costliest['arm'], 'token_forwards': steps * costliest['tokens_per_step']},
            'arms': {name: arms[name] for name in LABS[opts['lab']]['arms'] if name in arms}}


def main(argv=None):
    opts, passthrough = parse_args(sys.argv[1:] if argv is None else argv)
    runs = plan(opts, passthrough)
    failed = run_all(runs, opts['jobs'])
    results = aggregate(runs, opts)
    lines = report.write_results(results, opts['out_dir'])
    print('\n'.join(lines) + f"\nwrote {opts['out_dir']}/results.md, results.json, results.png, results_curves.png")
    if failed:
        raise RuntimeError(f"{len(failed)} run(s) failed: {', '.join(r['out_dir'] for r in failed)}; read their "
                           f"train.txt, fix the cause, and run the same command again (finished runs are kept)")
    return runs


if __name__ == '__main__':
    from configurator import run_main
    run_main(main, RuntimeError)  # bad options or failed runs: one line `error: ...` that says what to do
