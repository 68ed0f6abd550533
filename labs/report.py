"""
A lab's results as files, from the numbers labs/labs.py's aggregate() gathers:
results.json (every number), results.md (the tables), results.png (final scores per arm, both views)
and results_curves.png (the learning curves). labs/labs.py calls write_results() at the end of a lab.
"""
import json
import os

VIEWS = {'compute': 'Equal compute', 'steps': 'Equal steps'}


def pm(s):
    """mean ± std (min..max) of a stats.summary()."""
    return f"{s['mean']:.1f} ± {s['std']:.1f} ({s['min']:.1f}..{s['max']:.1f})"


def versus(p):
    """A stats.paired() result as table cells: difference [interval], wins, verdict."""
    if p['low'] is None:
        return ['' if p['mean'] is None else f"{p['mean']:+.1f}", f"{p['wins']}/{len(p['diffs'])}", p['verdict']]
    return [f"{p['mean']:+.1f} [{p['low']:+.1f}, {p['high']:+.1f}]", f"{p['wins']}/{len(p['diffs'])}", p['verdict']]


def millions(x):
    return f"{x / 1e6:.2f} M"


def tables(res):
    """The markdown of results.md, as a list of lines."""
    metric, base, arms = res['metric'], res['baseline'], res['arms']
    budget = res['budget']
    lines = [f"# lab '{res['lab']}'", "",
             f"{metric} in percent on the validation examples (greedy generation), mean ± std over seeds "
             f"(min..max). Seeds {', '.join(map(str, res['seeds']))}: a seed fixes the initial weights and the order "
             f"of the training batches, so two arms on the same seed are paired. 'vs {base}': the mean of the "
             f"differences arm - {base} over the seeds, with its 95% t-interval (t quantile from a table, n - 1 "
             f"degrees of freedom); 'wins': seeds on which the arm scored higher; verdict: helps if the interval "
             f"lies above 0, hurts if below, otherwise no evidence. 'cost': token-forwards per step relative "
             f"to causal (Bitune reads the prompt prefix twice); 's/run': one run's seconds of training and "
             f"evaluation, from its log, on the machine that ran it."]
    # the other metrics (exact match per operation), as means, in the order the logs give them
    ops = list(dict.fromkeys(k for a in arms.values() for v in a['views'].values() for k in v['stats'] if k != metric))
    titles = {'compute': f"{VIEWS['compute']}: {millions(budget['token_forwards'])} token-forwards per arm "
                         f"({budget['arm']}'s {res['max_iters']} iterations)",
              'steps': f"{VIEWS['steps']}: {res['max_iters']} iterations per arm"}
    for view in VIEWS:
        lines += ["", f"## {titles[view]}", "",
                  f"| arm | cost | iters | s/run | {metric} | vs {base} [95% CI] | wins | verdict | {' | '.join(ops)} |",
                  '|---' * (8 + len(ops)) + '|']
        for name, a in arms.items():
            v = a['views'].get(view)
            if v is None:
                continue
            secs = sum(r['elapsed_s'] for r in v['runs']) / len(v['runs'])
            cells = versus(v['vs_baseline']) if 'vs_baseline' in v else ['(baseline)', '', '']
            if v.get('vs_baseline', {}).get('arm', base) != base:  # a lab's 'versus': another reference arm
                cells[0] += f" vs {v['vs_baseline']['arm']}"
            cells += [f"{v['stats'][k]['mean']:.1f}" if k in v['stats'] else '' for k in ops]
            lines.append(f"| {name} | {a['cost']:.2f}x | {v['iters']} | {secs:.0f} | {pm(v['stats'][metric])} | "
                         f"{' | '.join(cells)} |")
    lines += ["", f"## Token-forwards to reach {res['target']:g} {metric}", "",
              f"From the equal-compute runs' learning curves (results_curves.png): where the mean over seeds first "
              f"reaches {res['target']:g}, linearly interpolated between evaluations; 'seeds': how many single "
              f"seeds reach it within the budget.", "",
              "| arm | token-forwards | of the budget | seeds |", "|---|---|---|---|"]
    for name, a in arms.items():
        t = a.get('to_target')
        if t is not None:
            x = t['token_forwards']
            cells = [millions(x), f"{x / budget['token_forwards']:.0%}"] if x is not None else ['not reached', '']
            lines.append(f"| {name} | {' | '.join(cells)} | {t['seeds_reached']}/{t['seeds']} |")
    return lines


def write_results(res, out_dir):
    """Writes the four files; returns the markdown lines."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, 'results.json'), 'w') as f:
        json.dump(res, f, indent=1)
    lines = tables(res)
    with open(os.path.join(out_dir, 'results.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    if res['arms']:
        plot_scores(res, os.path.join(out_dir, 'results.png'))
        plot_curves(res, os.path.join(out_dir, 'results_curves.png'))
    return lines


def pyplot():
    import matplotlib
    matplotlib.use('Agg')  # files only: works on a server with no display
    import matplotlib.pyplot as plt
    return plt


def plot_scores(res, path):
    """One panel per view: a bar for each arm's mean, a dot for each seed."""
    plt, metric, arms = pyplot(), res['metric'], res['arms']
    fig, axes = plt.subplots(1, 2, figsize=(2 + 1.2 * len(arms), 4), sharey=True)
    for ax, view in zip(axes, VIEWS):
        for i, a in enumerate(arms.values()):
            if view in a['views']:
                s = a['views'][view]['stats'][metric]
                v = s['values']
                ax.bar(i, s['mean'], color=f'C{i}', alpha=0.4)
                # a small sideways offset per seed, so equal scores stay visible as separate dots
                ax.scatter([i + 0.08 * (j - (len(v) - 1) / 2) for j in range(len(v))], v, color=f'C{i}', s=14,
                           zorder=3)
        ax.set_xticks(range(len(arms)), list(arms), rotation=45, ha='right', fontsize=8)
        ax.set(title=VIEWS[view], ylim=(0, 100))
    axes[0].set_ylabel(f'{metric} (dots: seeds, bars: mean)')
    fig.suptitle(f"lab '{res['lab']}'")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(res, path):
    """The metric against token-forwards and against wall time: the mean over seeds as a line, the band
    from the lowest to the highest seed. Equal-compute runs, so every arm ends at the same budget."""
    plt, metric = pyplot(), res['metric']
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for i, (name, a) in enumerate(res['arms'].items()):
        for ax, key, scale in ((axes[0], 'tokens', 1e6), (axes[1], 'wall_s', 1)):
            c = a.get('curve', {}).get(key)
            if c:
                x = [v / scale for v in c['x']]
                ax.plot(x, c['mean'], color=f'C{i}', marker='.', label=name)
                ax.fill_between(x, c['min'], c['max'], color=f'C{i}', alpha=0.15)
    for ax in axes:
        ax.axhline(res['target'], color='gray', linestyle=':', linewidth=1)
        ax.set(ylim=(0, 100))
    axes[0].set(xlabel='token-forwards (millions)', ylabel=f'{metric} (line: mean, band: min..max over seeds)')
    axes[1].set(xlabel='wall seconds (training + evaluation, this machine)')
    axes[0].legend(fontsize=8)
    fig.suptitle(f"lab '{res['lab']}': learning curves at equal compute")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
