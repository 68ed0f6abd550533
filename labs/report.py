"""
A lab's results as files, from the numbers labs/aggregate.py gathers: results.json (every
number), results.md (the tables) and three pictures sized for a projector (1920x1080, text 14 pt or more):
results_forest.png (each arm's paired difference with its 95% interval, both views), results.png (final
scores, each seed's points linked across the arms) and results_curves.png (the learning curves).
labs/labs.py calls write_results() at the end of a lab. Everything is drawn from the results dict alone,
so a lab's folder can be redrawn from its results.json:

    python labs/report.py labs/results/methods labs/results/methods/quick
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root, as a script
from utils.runtime import atomic_file, run_main  # noqa: E402

VIEWS = {'compute': 'Equal compute', 'steps': 'Equal steps'}


def pm(s):
    """mean ± std (min..max) of a stats.summary()."""
    return f"{s['mean']:.1f} ± {s['std']:.1f} ({s['min']:.1f}..{s['max']:.1f})"


def versus(p):
    """A stats.paired() result as table cells: difference [interval], wins, verdict."""
    if p['low'] is None:
        return ['' if p['mean'] is None else f"{p['mean']:+.1f}", f"{p['wins']}/{len(p['diffs'])}", p['verdict']]
    return [f"{p['mean']:+.1f} [{p['low']:+.1f}, {p['high']:+.1f}]", f"{p['wins']}/{len(p['diffs'])}", p['verdict']]


def count(x):
    """How many: a number as it is, a list or dict by its length."""
    return x if isinstance(x, int) else len(x)


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
             f"differences arm - {base} over the seeds, with its 95% t-interval (Student's t, n - 1 "
             f"degrees of freedom); 'wins': seeds on which the arm scored higher; verdict: helps if the interval "
             f"lies above 0, hurts if below, otherwise no evidence. 'cost': token-forwards per step relative "
             f"to causal (Bitune reads the prompt prefix twice); 's/run': one run's seconds of training and "
             f"evaluation, from its log, on the machine that ran it."]
    if 'pooled' in res:  # a class's lab: every student's shares pooled into one table
        lines += ["", f"Pooled: n = {len(res['seeds'])} seeds, from {count(res['pooled'])} share file(s) or run folder(s) "
                      f"(each a student's own seeds, run with the same settings)."]
    if 'reused' in res:
        lines += ["", f"Reused runs: {count(res['reused'])} of {res.get('runs', '?')} runs were already finished on disk "
                      f"with the same settings and code, and were not run again (their s/run is from when they ran)."]
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
    """Writes results.json, results.md and the three pictures, each whole or not at all; returns the
    markdown lines."""
    os.makedirs(out_dir, exist_ok=True)
    with atomic_file(os.path.join(out_dir, 'results.json')) as f:
        json.dump(res, f, indent=1)
    lines = tables(res)
    with atomic_file(os.path.join(out_dir, 'results.md')) as f:
        f.write('\n'.join(lines) + '\n')
    if res['arms']:
        plot_forest(res, os.path.join(out_dir, 'results_forest.png'))
        plot_scores(res, os.path.join(out_dir, 'results.png'))
        if any(a.get('curve') for a in res['arms'].values()):  # results without curves draw none
            plot_curves(res, os.path.join(out_dir, 'results_curves.png'))
    return lines


def redraw(out_dir):
    """Rewrites a lab folder's tables and pictures from its results.json (e.g. after a change here)."""
    path = os.path.join(out_dir, 'results.json')
    if not os.path.isfile(path):
        raise ValueError(f"no results.json in {out_dir}: give a lab's results folder, e.g. labs/results/methods")
    with open(path) as f:
        return write_results(json.load(f), out_dir)


# ---- the pictures: 19.2 x 10.8 inches at 100 dpi is 1920 x 1080 pixels, so 14 pt text stays readable
# from the back of a room. One colour per verdict; one colour per seed.
SIZE, DPI = (19.2, 10.8), 100
FONTS = {'font.size': 16, 'axes.titlesize': 18, 'axes.labelsize': 16, 'xtick.labelsize': 14,
         'ytick.labelsize': 14, 'legend.fontsize': 14, 'figure.titlesize': 20}
PANELS = ('steps', 'compute')  # left to right
VERDICT_COLOURS = {'helps': '#1a9641', 'hurts': '#d7191c', 'no evidence': '#555555', 'too few seeds': '#999999'}


def pyplot():
    import matplotlib
    matplotlib.use('Agg')  # files only: works on a server with no display
    import matplotlib.pyplot as plt
    return plt


def figure(plt, n_panels, ncols=None):
    """A 1920x1080 figure of n_panels axes in a grid, as a flat list."""
    ncols = ncols or n_panels
    nrows = -(-n_panels // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=SIZE, squeeze=False)
    axes = list(axes.flat)
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def finish(fig, title, bottom=0.0):
    fig.suptitle(title, fontsize=FONTS['figure.titlesize'])
    fig.tight_layout(rect=(0, bottom, 1, 1))  # bottom: room for a legend under the panels


def save(fig, plt, path, title, bottom=0.0):
    finish(fig, title, bottom)
    with atomic_file(path, 'wb') as f:  # whole or not at all, like every picture of a run
        fig.savefig(f, format='png', dpi=DPI)
    plt.close(fig)


def same_runs(res):
    """True when no arm trains longer for equal compute: both views are then the same runs."""
    return all(a['views'].get('steps', {}).get('iters') == a['views'].get('compute', {}).get('iters')
               for a in res['arms'].values())


def view_title(res, view):
    if view == 'compute' and same_runs(res):
        return f"{VIEWS[view]} (the same runs)"
    return VIEWS[view]


def plot_forest(res, path):
    """Each arm's mean paired difference from the arm it is compared with, and its 95% interval,
    one panel per view; the colour is the verdict. An interval left of 0 hurts, right of 0 helps."""
    plt, metric = pyplot(), res['metric']
    rows = [(name, a) for name, a in res['arms'].items()
            if any('vs_baseline' in v for v in a['views'].values())]
    with plt.rc_context(FONTS):
        fig, axes = figure(plt, 2)
        for ax, view in zip(axes, PANELS):
            for y, (name, a) in enumerate(rows):
                p = a['views'].get(view, {}).get('vs_baseline')
                if p is None or p['mean'] is None:
                    continue
                colour = VERDICT_COLOURS.get(p['verdict'], 'black')
                if p['low'] is not None:
                    ax.plot([p['low'], p['high']], [y, y], color=colour, linewidth=4, solid_capstyle='butt')
                    label = f"{p['mean']:+.1f} [{p['low']:+.1f}, {p['high']:+.1f}]  {p['verdict']}"
                else:
                    label = f"{p['mean']:+.1f}  {p['verdict']}"
                ax.plot(p['diffs'], [y] * len(p['diffs']), '|', color=colour, markersize=22, alpha=0.6)
                ax.plot(p['mean'], y, 'o', color=colour, markersize=14)
                ax.annotate(label, (p['mean'], y), xytext=(0, 16), textcoords='offset points', ha='center',
                            color=colour, fontsize=16, bbox={'facecolor': 'white', 'edgecolor': 'none', 'pad': 1})
            ax.axvline(0, color='black', linewidth=1.5)
            ax.set_yticks(range(len(rows)), [f"{name}\nvs {a['views'][next(iter(a['views']))].get('vs_baseline', {}).get('arm', res['baseline'])}"
                                             for name, a in rows])
            ax.set_ylim(len(rows) - 0.4, -0.6)  # the first arm on top, room for the labels above the dots
            ax.set(title=view_title(res, view), xlabel=f"{metric} difference (points): dot mean, bar 95% interval, ticks seeds")
            ax.grid(axis='x', alpha=0.3)
        ends = [x for _, a in rows for v in a['views'].values() if 'vs_baseline' in v
                for x in [v['vs_baseline']['low'], v['vs_baseline']['high'], *v['vs_baseline']['diffs']] if x is not None]
        low, high = min([0] + ends), max([0] + ends)
        pad = 0.15 * (high - low or 1)
        for ax in axes:
            ax.set_xlim(low - pad, high + pad)
        axes[1].tick_params(labelleft=False)
        save(fig, plt, path, f"lab '{res['lab']}': paired differences, n = {len(res['seeds'])} seeds "
                             f"(green helps, red hurts, grey no evidence)")


def plot_scores(res, path):
    """One panel per view: each arm's final scores, one point per seed, and a line through each seed's
    points across the arms, so the pairing the verdicts rest on shows; a black bar is each arm's mean."""
    plt, metric, arms = pyplot(), res['metric'], res['arms']
    seeds = sorted({run['seed'] for a in arms.values() for v in a['views'].values() for run in v['runs']})
    with plt.rc_context(FONTS):
        fig, axes = figure(plt, 2)
        for ax, view in zip(axes, PANELS):
            for k, seed in enumerate(seeds):
                points = [(i, run[metric]) for i, a in enumerate(arms.values()) if view in a['views']
                          for run in a['views'][view]['runs'] if run['seed'] == seed and metric in run]
                if points:
                    ax.plot(*zip(*points), '-o', color=f'C{k % 10}', linewidth=1.5, markersize=8, alpha=0.8,
                            label=f'seed {seed}')
            for i, a in enumerate(arms.values()):
                if view in a['views']:
                    ax.plot([i - 0.25, i + 0.25], [a['views'][view]['stats'][metric]['mean']] * 2, color='black',
                            linewidth=4)
            ax.set_xticks(range(len(arms)), list(arms), rotation=25 if len(arms) > 4 else 0,
                          ha='right' if len(arms) > 4 else 'center')
            ax.set(title=view_title(res, view), ylim=(0, 100), xlim=(-0.5, len(arms) - 0.5))
            ax.grid(axis='y', alpha=0.3)
        axes[0].set_ylabel(f'{metric} (%): a line per seed, bar = mean')
        axes[1].tick_params(labelleft=False)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc='lower center', ncol=min(len(seeds), 10))
        save(fig, plt, path, f"lab '{res['lab']}': final scores, the same seed linked across arms",
             bottom=0.05 * -(-len(seeds) // 10))


def plot_curves(res, path):
    """Equal-compute learning curves: one panel per arm against token-forwards (its mean over seeds as a
    line, the band from the lowest to the highest seed, the baseline's mean dashed for reference), and
    a last panel of every arm's mean against wall time. Every arm ends at the same budget."""
    plt, metric, base = pyplot(), res['metric'], res['baseline']
    curves = [(i, name, a['curve']) for i, (name, a) in enumerate(res['arms'].items()) if a.get('curve')]
    ref = res['arms'].get(base, {}).get('curve')
    n = len(curves) + 1
    with plt.rc_context(FONTS):
        fig, axes = figure(plt, n, ncols=min(n, 4) if n != 5 else 3)
        for ax, (i, name, c) in zip(axes, curves):
            x = [v / 1e6 for v in c['tokens']['x']]
            ax.fill_between(x, c['tokens']['min'], c['tokens']['max'], color=f'C{i}', alpha=0.25)
            ax.plot(x, c['tokens']['mean'], color=f'C{i}', marker='o', linewidth=3)
            if ref and name != base:
                ax.plot([v / 1e6 for v in ref['tokens']['x']], ref['tokens']['mean'], color='black', linestyle='--',
                        linewidth=2)
            ax.set_title(name, color=f'C{i}')
            ax.set(xlabel='token-forwards (millions)')
        wall = axes[-1]
        for i, name, c in curves:
            wall.plot(c['wall_s']['x'], c['wall_s']['mean'], color=f'C{i}', marker='o', linewidth=2.5, label=name)
        wall.set(title='every arm: wall time', xlabel='wall seconds (this machine)')
        for k, ax in enumerate(axes):
            ax.axhline(res['target'], color='gray', linestyle=':', linewidth=1.5)
            ax.set(ylim=(0, 100))
            ax.grid(alpha=0.3)
            if k % (min(n, 4) if n != 5 else 3) == 0:
                ax.set_ylabel(f'{metric} (%)')
        save(fig, plt, path, f"lab '{res['lab']}', equal compute: line mean, band min..max of seeds, dashed "
                             f"{base}, dotted {res['target']:g}%")


def main(argv):
    if not argv:
        raise ValueError("give one or more lab results folders, e.g. python labs/report.py labs/results/methods")
    for out_dir in argv:
        redraw(out_dir)
        print(f"redrew {out_dir}: results.md, results_forest.png, results.png, results_curves.png")


if __name__ == '__main__':
    run_main(lambda: main(sys.argv[1:]))  # a missing folder or results.json: one line `error: ...`
