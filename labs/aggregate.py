"""
A lab's numbers from its runs' log rows: what a training step costs (cost, tokens_per_step, counted
on the run's own training data), and every arm's final scores, their summary over seeds, the paired
comparison with the arm it is compared with and its learning curve (aggregate). labs/labs.py plans
with the first two and hands the third's dict to labs/report.py.

    aggregate(runs, opts, LABS[opts['lab']])   # the runs of labs.plan(), finished or handed in
"""
from bitune import tokens_read
from data import tasks
from labs import stats
from labs.runner import finished
from utils.rundir import read_log

_LENGTHS = {}  # (prompt, answer) lengths of a training set, by the settings that make it


def train_lengths(cfg):
    """(P, A) per training example, from the same call as train.py's; every arm of a lab asks."""
    key = tuple(sorted((k, v) for k, v in cfg.items()
                       if k.startswith('toy_') or k in ('dataset', 'data_dir')))
    if key not in _LENGTHS:
        task = tasks.task_from_config(cfg)  # the same task train.py builds from these settings
        _LENGTHS[key] = [(len(ex['prompt']), len(ex['answer'])) for ex in task['train']]
    return _LENGTHS[key]


def cost(cfg):
    """Token-forwards per training step relative to causal, on the run's own training data. Causal
    and BAI read T = P + A tokens per example, Bitune what bitune.tokens_read counts. BAI's extra
    attention of the answer over the prompt is tiny and not counted."""
    if not cfg['method'].startswith('bitune'):
        return 1.0
    lengths = train_lengths(cfg)
    # The labs count one token more per example than Pass C reads: the answer's end token, a target
    # and not an input (hence a + 1). Every published equal-compute budget was planned with that
    # count, so it stays until the labs are rerun.
    read = sum(tokens_read(p, a + 1, cfg['bitune_variant']) for p, a in lengths)
    return read / sum(p + a for p, a in lengths)


def tokens_per_step(cfg):
    """Token-forwards of one training step: examples per step x their mean length x cost."""
    lengths = train_lengths(cfg)
    mean_length = sum(p + a for p, a in lengths) / len(lengths)
    return cfg['batch_size'] * cfg['gradient_accumulation_steps'] * mean_length * cost(cfg)


def scores_of(row):
    """The task metrics of a log row: exact match (overall and per op) or ROUGE."""
    return {k: v for k, v in row.items() if k == 'exact_match' or k.startswith(('em_', 'rouge'))}


def rows_of(run):
    """A finished run's evaluation rows, handed in with it (a share, see labs/shares.py) or from its
    log; None while it is unfinished (it has no final score)."""
    if 'rows' in run:
        return run['rows']
    return read_log(run['out_dir']) if finished(run) else None


def aggregate(runs, opts, lab):
    """Every number of the lab `lab` (an entry of labs.LABS), from the finished runs' rows
    (rows_of): per arm, its cost and, for each view, the runs' final scores, their summary over
    seeds and the paired comparison with the baseline (or the arm lab['versus'] names); its learning
    curve (equal-compute runs) and the token-forwards it needs to reach opts['target']."""
    done = [(r, rows) for r in runs if r['arm'] != 'base' for rows in [rows_of(r)] if rows]
    metric = 'exact_match' if 'exact_match' in (done[0][1][-1] if done else {}) else 'rougeL'
    arms = {}
    for r, rows in done:
        arm = arms.setdefault(r['arm'], {'cost': cost(r['cfg']),
                                         'tokens_per_step': r['tokens_per_step'],
                                         'views': {}, 'curves': []})
        for view in r['views']:
            v = arm['views'].setdefault(view, {'iters': r['cfg']['max_iters'], 'runs': []})
            v['runs'].append({'seed': r['seed'], 'elapsed_s': rows[-1]['elapsed_s'],
                              **scores_of(rows[-1])})
        if 'compute' in r['views']:
            arm['curves'].append([(row['iter'], row['elapsed_s'], row[metric]) for row in rows])
    for arm in arms.values():
        for v in arm['views'].values():
            keys = [k for k in v['runs'][0] if k not in ('seed', 'elapsed_s')]
            v['stats'] = {k: stats.summary(run[k] for run in v['runs'] if k in run) for k in keys}
        curves = arm.pop('curves')
        if curves:
            tps = arm['tokens_per_step']
            arm['curve'] = {
                'tokens': stats.mean_curve([[(it * tps, y) for it, _, y in c] for c in curves]),
                'wall_s': stats.mean_curve([[(s, y) for _, s, y in c] for c in curves])}
            mean = arm['curve']['tokens']
            reached = [stats.first_crossing([it * tps for it, _, _ in c], [y for _, _, y in c],
                                            opts['target'])
                       for c in curves]
            arm['to_target'] = {
                'token_forwards': stats.first_crossing(mean['x'], mean['mean'], opts['target']),
                'seeds_reached': sum(x is not None for x in reached), 'seeds': len(curves)}
    versus = lab.get('versus', {})
    for name, arm in arms.items():
        ref = versus.get(name, opts['baseline'])  # the arm this one is compared with
        base = arms.get(ref, {'views': {}})
        for view, v in arm['views'].items():
            if name != opts['baseline'] and view in base['views']:
                by_seed = {run['seed']: run[metric] for run in v['runs']}
                theirs = {run['seed']: run[metric] for run in base['views'][view]['runs']}
                v['vs_baseline'] = stats.paired(by_seed, theirs)
                v['vs_baseline']['arm'] = ref
    return {'lab': opts['lab'], 'metric': metric, 'baseline': opts['baseline'],
            'target': opts['target'], 'seeds': opts['seeds'],
            'max_iters': opts['budget']['max_iters'],
            'budget': {k: opts['budget'][k] for k in ('arm', 'token_forwards')},
            'arms': {name: arms[name] for name in lab['arms'] if name in arms}}


def intervals(res):
    """One line per compared arm of aggregate()'s results: its mean difference with its reference
    arm and the 95% interval in each view, as the forest plot draws them."""
    lines = []
    for name, arm in res['arms'].items():
        cells, ref = [], None
        for view in ('steps', 'compute'):
            p = arm['views'].get(view, {}).get('vs_baseline')
            if p and p['mean'] is not None:
                ci = '' if p['low'] is None else f" [{p['low']:+.1f}, {p['high']:+.1f}]"
                cells.append(f"equal {view} {p['mean']:+.1f}{ci} {p['verdict']}")
                ref = p['arm']
        if cells:
            lines.append(f"  {name} vs {ref}: {'; '.join(cells)}")
    return lines
