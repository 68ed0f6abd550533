"""
Labs: a grid of train.py runs (arms x seeds) at equal compute, and one table of what they reached.

    python labs/labs.py --lab=methods            # causal vs Bitune vs BAI vs both, operation after the data
    python labs/labs.py --lab=op_before          # the same with the operation before the data
    python labs/labs.py --lab=bitune_ablations   # Bitune's six variants (arXiv 2405.14862, its ablation table)
    python labs/labs.py --lab=bai_settings       # BAI's pivot layer and lambda (arXiv 2408.13959)
    python labs/labs.py --lab=finetune           # pretrain on copy, then LoRA vs Bitune-LoRA on the other ops
    python labs/labs.py --lab=methods --seeds=1,2 --max_iters=100 --jobs=2 --n_layer=2   # any --key=value reaches every run

Each run gets config/lab_toy.py, then its lab's and arm's settings, then your --key=value.
"Equal compute" = the same iterations, batch size, data and model for every arm. It is NOT
equal FLOPs: Bitune reads the prompt prefix twice, ((P-1) + (P-1) + (T-P+1)) / T token-forwards
per step relative to causal (prompt P, prompt + answer T): ~1.5x on the labs' toy data, where
prompts are long next to answers. The table's 'cost' column gives it for every arm.
Runs land in out_dir/<arm>/s<seed>/ (default out_dir: labs/runs/<lab>); a run whose log already
reaches max_iters with the same command is skipped, so running a command again resumes the lab.
Results: out_dir/results.md (table), results.json (every number), results.png (seeds and means).
"""
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root: train.py, bitune.py

METHODS = {'causal': {'method': 'causal'}, 'bitune': {'method': 'bitune'}, 'bai': {'method': 'bai'},
           'bitune_bai': {'method': 'bitune_bai'}}
# A lab: 'arms' (name -> train.py settings), settings for 'every' arm, and optionally a 'base' run per
# seed that every arm of that seed fine-tunes from (its checkpoint becomes their init_from).
LABS = {
    # Where does reading the prompt both ways help? With the op AFTER the data a causal model reads
    # the data before it knows what to do with it; with the op BEFORE, it knows from the start.
    'methods': {'arms': METHODS},
    'op_before': {'arms': METHODS, 'every': {'toy_op_position': 'before'}},
    # Which part of Bitune matters? (bitune.VARIANTS: pass A's mask and adapter, pass B, the mixing)
    'bitune_ablations': {'arms': {v: {'method': 'bitune', 'bitune_variant': v}
                                  for v in ('full', 'naive', 'no_mixing', 'only_causal', 'shared', 'fixed')}},
    # BAI one factor at a time: the pivot layer at lambda 1, then lambda at the final layer.
    # lambda = 0 is exactly the causal baseline (bai.compute_loss skips the loss), hence that arm.
    'bai_settings': {'arms': {
        'causal (lambda 0)': {'method': 'causal'},
        **{f'layer {layer}, lambda 1': {'method': 'bai', 'bai_layer': layer} for layer in (-1, 0, 1, 2)},
        'layer -1, lambda 0.1': {'method': 'bai', 'bai_lambda': 0.1},
        'layer -1, lambda 3': {'method': 'bai', 'bai_lambda': 3.0}}},
    # The papers' setting in miniature: a base that knows the format (fully trained on copy only),
    # then parameter-efficient tuning on new operations. LoRA usually wants a higher learning rate.
    'finetune': {'base': {'method': 'causal', 'peft': 'none', 'toy_ops': 'C'},
                 'every': {'peft': 'lora', 'toy_ops': 'RSD', 'learning_rate': 3e-3},
                 # Bitune trains two rank-8 adapters; a rank-16 causal LoRA has as many parameters. At the
                 # same scale alpha/r = 1 its update B A is a sum of twice the terms, so also at scale 0.5.
                 'arms': {'lora_causal': {'method': 'causal'},
                          'lora_causal_r16': {'method': 'causal', 'lora_r': 16, 'lora_alpha': 16},
                          'lora_causal_r16_alpha8': {'method': 'causal', 'lora_r': 16, 'lora_alpha': 8},
                          'lora_bitune': {'method': 'bitune'},
                          # Is Bitune's effect PEFT-agnostic? The same pair with the other adapter kinds (model.py).
                          # IA3 trains ~20x fewer numbers than LoRA and wants a far higher learning rate, chosen
                          # by a sweep of ia3_causal on seed 4 (outside the default seeds; the handout has it).
                          'dora_causal': {'method': 'causal', 'peft': 'dora'},
                          'dora_bitune': {'method': 'bitune', 'peft': 'dora'},
                          'ia3_causal': {'method': 'causal', 'peft': 'ia3', 'learning_rate': 0.3},
                          'ia3_bitune': {'method': 'bitune', 'peft': 'ia3', 'learning_rate': 0.3}}},
}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # runs start here, where train.py is
CONFIG = os.path.join(ROOT, 'config', 'lab_toy.py')


def parse_args(argv):
    """labs.py's own options, and every other --key=value (passed on to every run)."""
    opts, passthrough = {'lab': None, 'seeds': '1,2,3', 'max_iters': None, 'out_dir': None, 'jobs': '1'}, []
    for arg in argv:
        key, _, value = arg[2:].partition('=')
        if arg.startswith('--') and key in opts:
            opts[key] = value
        elif key == 'seed':
            raise ValueError(f"{arg}: labs.py sets each run's seed; use --seeds=1,2,3")
        else:
            passthrough.append(arg)
    if opts['lab'] not in LABS:
        raise ValueError(f"--lab={opts['lab']}: choose one of {', '.join(LABS)}")
    try:
        seeds, jobs = [int(s) for s in opts['seeds'].split(',')], int(opts['jobs'])
    except ValueError:
        raise ValueError(f"--seeds={opts['seeds']} --jobs={opts['jobs']}: write e.g. --seeds=1,2,3 --jobs=2") from None
    if jobs < 1 or len(set(seeds)) != len(seeds):
        raise ValueError("--jobs must be at least 1, and --seeds must not repeat a seed")
    out_dir = os.path.abspath(opts['out_dir'] or os.path.join(ROOT, 'labs', 'runs', opts['lab']))  # the runs start in ROOT
    return {**opts, 'seeds': seeds, 'jobs': jobs, 'out_dir': out_dir}, passthrough


def plan(opts, passthrough):
    """The lab's runs: dicts with arm, seed, stage (0 = bases), out_dir, argv for train.py, and its config,
    resolved here with train.py's own defaults so that a typo fails before any run starts."""
    from configurator import configure
    from train import DEFAULTS
    lab, runs = LABS[opts['lab']], []
    stages = ([[('base', lab['base'])]] if 'base' in lab else []) + \
        [[(arm, {**lab.get('every', {}), **settings}) for arm, settings in lab['arms'].items()]]
    for stage, arms in enumerate(stages):
        for seed in opts['seeds']:
            for arm, settings in arms:
                if stage > 0:  # fine-tune from the same seed's base
                    settings = {**settings, 'init_from': os.path.join(opts['out_dir'], 'base', f's{seed}', 'ckpt.pt')}
                out = os.path.join(opts['out_dir'], arm.replace(',', '').replace(' ', '_'), f's{seed}')
                argv = [CONFIG, *[f'--{k}={v}' for k, v in settings.items()], *passthrough,
                        *([f"--max_iters={opts['max_iters']}"] if opts['max_iters'] else []),
                        f'--seed={seed}', f'--out_dir={out}']
                runs.append({'arm': arm, 'seed': seed, 'stage': stage, 'out_dir': out, 'argv': argv,
                             'cfg': configure(DEFAULTS, argv)})
    return runs


def last_row(out_dir, name='log.jsonl'):
    """The last line of a run's JSON-lines file, or None."""
    path = os.path.join(out_dir, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        rows = [line for line in f if line.strip()]
    return json.loads(rows[-1]) if rows else None


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
    # Bitune's (slower) runs first, so no job idles at the end waiting for a long one
    todo = sorted((r for r in runs if not finished(r)),
                  key=lambda r: (r['stage'], not r['cfg']['method'].startswith('bitune')))
    print(f"{len(runs)} runs, {len(runs) - len(todo)} already finished; {jobs} at a time, {threads} thread(s) each")
    failed, t0, bar = [], time.time(), tqdm(total=len(todo), desc='runs', dynamic_ncols=True)
    for stage in sorted({r['stage'] for r in todo}):
        with ThreadPoolExecutor(jobs) as pool:  # threads only wait here; the work is in the subprocesses
            started = {pool.submit(launch, r, threads): r for r in todo if r['stage'] == stage}
            for fut in as_completed(started):
                r, (rc, secs) = started[fut], fut.result()
                if rc != 0 or not finished(r):
                    failed.append(r)
                tqdm.write(f"{r['arm']} seed {r['seed']}: {'FAILED, see its train.txt' if r in failed else 'done'}"
                           f" in {secs:.0f}s -> {r['out_dir']}")
                bar.update()
    bar.close()
    print(f"total {time.time() - t0:.0f}s")
    return failed


def cost(cfg):
    """Token-forwards per training step relative to causal, on the run's own training data. Causal and
    BAI read T = P + A tokens per example; Bitune reads the prefix (P-1 tokens) in Pass A, again in
    Pass B (variants that have one), and the last prompt token + answer (A+1 = T-P+1) in Pass C.
    BAI's extra attention of the answer over the prompt is tiny and not counted."""
    if not cfg['method'].startswith('bitune'):
        return 1.0
    from bitune import VARIANTS
    from data import tasks
    if cfg['dataset'] == 'toy':  # the same call as train.py's
        task = tasks.load_task('toy', seed=cfg['toy_seed'], n_train=cfg['toy_n_train'], n_val=cfg['toy_n_val'],
                               ops=cfg['toy_ops'], min_len=cfg['toy_min_len'], max_len=cfg['toy_max_len'],
                               n_symbols=cfg['toy_n_symbols'], op_position=cfg['toy_op_position'])
    else:
        task = tasks.load_task(cfg['dataset'], data_dir=cfg['data_dir'])
    lengths = [(len(ex['prompt']), len(ex['answer'])) for ex in task['train']]  # (P, A) per example
    passes = 2 if VARIANTS[cfg['bitune_variant']][2] else 1
    return sum(passes * (p - 1) + a + 1 for p, a in lengths) / sum(p + a for p, a in lengths)


def aggregate(runs):
    """{arm: {'runs': [per seed], 'cost', metric: {mean, std, min, max, values}}} from each finished run's
    final log row. std is over seeds with n-1 (0 for a single run)."""
    arms = {}
    for r in runs:
        if r['arm'] == 'base' or not finished(r):
            continue  # the base is a means, not an arm; an unfinished run has no final score
        row = last_row(r['out_dir'])
        scores = {k: v for k, v in row.items() if k == 'exact_match' or k.startswith(('em_', 'rouge'))}
        if r['arm'] not in arms:
            arms[r['arm']] = {'runs': [], 'cost': cost(r['cfg'])}
        arms[r['arm']]['runs'].append({'seed': r['seed'], 'elapsed_s': row['elapsed_s'], **scores})
    for arm in arms.values():
        for k in [k for k in arm['runs'][0] if k not in ('seed', 'elapsed_s')]:
            v = [run[k] for run in arm['runs'] if k in run]
            arm[k] = {'mean': statistics.mean(v), 'std': statistics.stdev(v) if len(v) > 1 else 0.0,
                      'min': min(v), 'max': max(v), 'values': v}
    return arms


def write_results(arms, out_dir, title):
    """results.json (everything), results.md (the table), results.png (a dot per seed, a bar per mean)."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, 'results.json'), 'w') as f:
        json.dump({'lab': title, 'arms': arms}, f, indent=1)
    keys = [k for k in next(iter(arms.values()), {}) if k not in ('runs', 'cost')]
    lines = [f"# {title}", "", "Final scores in percent (greedy generation on val): mean ± std over seeds "
             "(min..max). Every arm ran the same iterations, batch size, data and model. 'cost': token-forwards "
             "per step relative to causal (Bitune reads the prompt prefix twice); 's/run': training + evaluation "
             "seconds of one run (from its log).", "",
             f"| arm | runs | cost | s/run | {' | '.join(keys)} |", '|---' * (len(keys) + 4) + '|']
    for name, a in arms.items():
        cells = [f"{a[k]['mean']:.1f} ± {a[k]['std']:.1f} ({a[k]['min']:.1f}..{a[k]['max']:.1f})" if k in a else ''
                 for k in keys]
        secs = statistics.mean(r['elapsed_s'] for r in a['runs'])
        lines.append(f"| {name} | {len(a['runs'])} | {a['cost']:.2f}x | {secs:.0f} | {' | '.join(cells)} |")
    with open(os.path.join(out_dir, 'results.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    if keys:
        plot(arms, keys, os.path.join(out_dir, 'results.png'), title)
    return lines


def plot(arms, keys, path, title):
    import matplotlib
    matplotlib.use('Agg')  # files only: works on a server with no display
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(keys), figsize=(1 + len(keys) * (0.5 + 0.45 * len(arms)), 4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for i, a in enumerate(arms.values()):
            if key in a:
                v = a[key]['values']
                ax.bar(i, a[key]['mean'], color=f'C{i}', alpha=0.4)
                # a small sideways offset per seed, so equal scores stay visible as separate dots
                ax.scatter([i + 0.08 * (j - (len(v) - 1) / 2) for j in range(len(v))], v, color=f'C{i}', s=14, zorder=3)
        ax.set_xticks(range(len(arms)), list(arms), rotation=45, ha='right', fontsize=8)
        ax.set(title=key, ylim=(0, 100))
    axes[0][0].set_ylabel('percent (dots: seeds, bars: mean)')
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    opts, passthrough = parse_args(sys.argv[1:] if argv is None else argv)
    runs = plan(opts, passthrough)
    failed = run_all(runs, opts['jobs'])
    lines = write_results(aggregate(runs), opts['out_dir'], f"lab '{opts['lab']}'")
    print('\n'.join(lines[4:]) + f"\nwrote {opts['out_dir']}/results.md, results.json, results.png")
    if failed:
        raise RuntimeError(f"{len(failed)} run(s) failed: {', '.join(r['out_dir'] for r in failed)}; read their "
                           f"train.txt, fix the cause, and run the same command again (finished runs are kept)")
    return runs


if __name__ == '__main__':
    try:
        main()
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        sys.exit(f"error: {e}")
