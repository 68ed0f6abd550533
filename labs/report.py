"""
A lab's results as files, from the numbers labs/aggregate.py gathers: results.json (every number),
results.md (the tables) and three pictures for a projector (1920 pixels wide, text 14 pt or more):
results_forest.png (each arm's paired difference with its 95% interval, both views; as tall as its
rows need), results.png (final scores, each seed's points linked across the arms, 1920x1080) and
results_curves.png (the learning curves, 1920x1080). labs/labs.py calls write_results() at the end
of a lab. Everything is drawn from the results dict alone, so a lab's folder can be redrawn from its
results.json, which read_results() checks first (a damaged file is one line naming what is wrong):

    python labs/report.py labs/results/methods labs/results/methods/quick
"""
import json
import math
import os
import re
import sys

# the repo root, as a script
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from utils.runtime import atomic_file, run_main  # noqa: E402

VIEWS = {'compute': 'Equal compute', 'steps': 'Equal steps'}


def pm(s):
    """mean ± std (min..max) of a stats.summary()."""
    return f"{s['mean']:.1f} ± {s['std']:.1f} ({s['min']:.1f}..{s['max']:.1f})"


def versus(p):
    """A stats.paired() result as table cells: difference [interval], wins, verdict."""
    if p['low'] is None:
        return ['' if p['mean'] is None else f"{p['mean']:+.1f}", f"{p['wins']}/{len(p['diffs'])}",
                p['verdict']]
    return [f"{p['mean']:+.1f} [{p['low']:+.1f}, {p['high']:+.1f}]",
            f"{p['wins']}/{len(p['diffs'])}", p['verdict']]


def count(x):
    """How many: a number as it is, a list or dict by its length."""
    return x if isinstance(x, int) else len(x)


def millions(x):
    return f"{x / 1e6:.2f} M"


def setups_line(setups):
    """'Setups pooled (2): cpu ... (7 shares); cuda ... (3 shares).' from results' 'setups'."""
    each = [f"{' '.join(s['setup'].split())} ({s['shares']} share{'s' * (s['shares'] != 1)})"
            for s in setups]
    return f"Setups pooled ({len(setups)}): {'; '.join(each)}."


def tables(res):
    """The markdown of results.md, as a list of lines."""
    metric, base, arms = res['metric'], res['baseline'], res['arms']
    budget = res['budget']
    lines = [f"# lab '{res['lab']}'", "",
             f"{metric} in percent on the validation examples (greedy generation), "
             f"mean ± std over "
             f"seeds (min..max). Seeds {', '.join(map(str, res['seeds']))}: a seed fixes the "
             f"initial weights and the order of the training batches, so two arms on the same seed "
             f"are paired. 'vs {base}': the mean of the differences arm - {base} over the seeds, "
             f"with its 95% t-interval (Student's t, n - 1 degrees of freedom); 'wins': seeds on "
             f"which the arm scored higher; verdict: helps if the interval lies above 0, hurts if "
             f"below, otherwise no evidence. 'cost': token-forwards per step relative to causal "
             f"(Bitune reads the prompt prefix twice); 's/run': one run's seconds of training and "
             f"evaluation, from its log, on the machine that ran it."]
    setups = f" {setups_line(res['setups'])}" if res.get('setups') else ''
    if 'pooled' in res:  # a class's lab: every student's shares pooled into one table
        # one line, setups included: a pooled lab's tables are compared line by line without it
        lines += ["", f"Pooled: n = {len(res['seeds'])} seeds, from {count(res['pooled'])} share "
                      f"file(s) or run folder(s) (each a student's own seeds, run with the same "
                      f"settings).{setups}"]
    elif setups:
        lines += ["", setups.strip()]
    if 'reused' in res:
        lines += ["", f"Reused runs: {count(res['reused'])} of {res.get('runs', '?')} runs were "
                      f"already finished on disk with the same settings and code, and were not run "
                      f"again (their s/run is from when they ran)."]
    # the other metrics (exact match per operation), as means, in the order the logs give them
    ops = list(dict.fromkeys(k for a in arms.values() for v in a['views'].values()
                             for k in v['stats'] if k != metric))
    titles = {'compute': f"{VIEWS['compute']}: {millions(budget['token_forwards'])} token-forwards "
                         f"per arm ({budget['arm']}'s {res['max_iters']} iterations)",
              'steps': f"{VIEWS['steps']}: {res['max_iters']} iterations per arm"}
    for view in VIEWS:
        lines += ["", f"## {titles[view]}", "",
                  f"| arm | cost | iters | s/run | {metric} | vs {base} [95% CI] | wins | "
                  f"verdict | {' | '.join(ops)} |",
                  '|---' * (8 + len(ops)) + '|']
        for name, a in arms.items():
            v = a['views'].get(view)
            if v is None:
                continue
            secs = sum(r['elapsed_s'] for r in v['runs']) / len(v['runs'])
            cells = versus(v['vs_baseline']) if 'vs_baseline' in v else ['(baseline)', '', '']
            if v.get('vs_baseline', {}).get('arm', base) != base:  # a lab's 'versus': another arm
                cells[0] += f" vs {v['vs_baseline']['arm']}"
            cells += [f"{v['stats'][k]['mean']:.1f}" if k in v['stats'] else '' for k in ops]
            lines.append(f"| {name} | {a['cost']:.2f}x | {v['iters']} | {secs:.0f} | "
                         f"{pm(v['stats'][metric])} | {' | '.join(cells)} |")
    lines += ["", f"## Token-forwards to reach {res['target']:g} {metric}", "",
              f"From the equal-compute runs' learning curves (results_curves.png): where the mean "
              f"over seeds first reaches {res['target']:g}, linearly interpolated between "
              f"evaluations; 'seeds': how many single seeds reach it within the budget.", "",
              "| arm | token-forwards | of the budget | seeds |", "|---|---|---|---|"]
    for name, a in arms.items():
        t = a.get('to_target')
        if t is not None:
            x = t['token_forwards']
            cells = ([millions(x), f"{x / budget['token_forwards']:.0%}"] if x is not None
                     else ['not reached', ''])
            lines.append(f"| {name} | {' | '.join(cells)} | {t['seeds_reached']}/{t['seeds']} |")
    return lines


def write_results(res, out_dir):
    """Writes results.json, results.md and the three pictures, each whole or not at all; returns the
    markdown lines. Results that could not be drawn (a number that is not finite) write nothing."""
    check_results(res, f"the results for {os.path.join(out_dir, 'results.json')}",
                  "nothing was written; the numbers come from the runs' log.jsonl: rerun that "
                  "arm's runs (delete their folders) and then the lab")
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
    """Rewrites a lab folder's tables and pictures from its results.json (e.g. after a change
    here)."""
    return write_results(read_results(os.path.join(out_dir, 'results.json')), out_dir)


# ---- reading results.json: written by labs/labs.py, but a file can be cut short, edited or damaged

def read_results(path):
    """The results dict of a lab from its results.json, checked for everything tables() and the
    pictures use; anything else is a ValueError naming the file, the place in it and what to do."""
    folder = os.path.dirname(path) or '.'
    if not os.path.isfile(path):
        there = (f"{folder} is a file" if os.path.isfile(folder)
                 else f"no results.json in {folder}")
        raise ValueError(f"{there}: give a lab's results folder, e.g. labs/results/methods")
    with open(path, 'rb') as f:
        data = f.read()
    redo = ("rerun the lab that wrote it: python labs/labs.py --lab=NAME (with --pool=FOLDER "
            "for a class's pooled shares)")
    try:
        text = data.decode('utf-8')
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.start} of {len(data)}), so not a "
                         f"lab's results; {redo}") from None
    named = re.search(r'"lab": *"([\w.-]{1,60})"', text)  # even in a file cut short
    if named:
        redo = redo.replace('NAME', named.group(1))
    try:
        res = json.loads(text)
    except json.JSONDecodeError as e:
        # the error is at the very end, or a text never ends: the rest of the file is missing
        cut = e.pos >= len(text.rstrip()) or e.msg.startswith('Unterminated string')
        what = ("ends in the middle of the results (cut short: a full disk, or a copy that "
                "stopped?)" if cut else f"is not JSON at line {e.lineno}, column {e.colno} "
                                        f"({e.msg})")
        raise ValueError(f"{path} {what}; {redo}") from None
    check_results(res, path, f"labs/labs.py never writes that, so the file is damaged or was "
                             f"edited; {redo}")
    return res


def check_results(res, where, fix):
    """Raise a ValueError '<where>: <place>: <what is wrong>; <fix>' unless res holds, in the shapes
    labs/aggregate.py writes, every value tables() and the pictures read, each number finite."""
    def bad(place, what):
        raise ValueError(f"{where}: {place + ' ' if place else ''}{what}; {fix}")

    def shown(x):
        if x is None:
            return 'null'
        if isinstance(x, bool):
            return str(x).lower()
        if isinstance(x, str):
            return f"the text {x[:40]!r}"
        if isinstance(x, (list, dict)):
            return 'a list' if isinstance(x, list) else 'an object'
        return repr(x)

    def obj(x, place, keys=()):
        if not isinstance(x, dict):
            bad(place, f"is {shown(x)}, not an object")
        for k in keys:
            if k not in x:
                bad(place, f"has no '{k}'")
        return x

    def text(x, place):
        if not isinstance(x, str):
            bad(place, f"is {shown(x)}, not a text")

    def number(x, place, whole=False, positive=False, none=False):
        if x is None and none:
            return
        kind = int if whole else (int, float)
        if isinstance(x, bool) or not isinstance(x, kind):
            bad(place, f"is {shown(x)}, not a {'whole ' if whole else ''}number")
        if not math.isfinite(x):
            bad(place, f"is {x}, not a finite number")
        if positive and x <= 0:
            bad(place, f"is {x}, not above 0")

    def numbers(x, place):
        if not isinstance(x, list):
            bad(place, f"is {shown(x)}, not a list of numbers")
        for i, v in enumerate(x):
            number(v, f"{place}[{i}]")

    if not isinstance(res, dict):
        bad('', f"holds {shown(res)}, not a lab's results (a JSON object)")
    for k in ('lab', 'metric', 'baseline', 'target', 'seeds', 'max_iters', 'budget', 'arms'):
        if k not in res:
            bad('', f"has no '{k}', so it is not a lab's results (or it is cut short)")
    for k in ('lab', 'metric', 'baseline'):
        text(res[k], f"'{k}'")
    metric = res['metric']
    number(res['target'], "'target'")
    if not isinstance(res['seeds'], list):
        bad("'seeds'", f"is {shown(res['seeds'])}, not a list of seeds")
    for i, s in enumerate(res['seeds']):
        number(s, f"'seeds'[{i}]", whole=True)
    number(res['max_iters'], "'max_iters'", whole=True)
    obj(res['budget'], "'budget'", keys=('arm', 'token_forwards'))
    text(res['budget']['arm'], "budget.arm")
    number(res['budget']['token_forwards'], "budget.token_forwards", positive=True)
    pooled = res.get('pooled', [])
    if isinstance(pooled, bool) or not isinstance(pooled, (list, int)):
        bad("'pooled'", f"is {shown(pooled)}, not a list of shares or their number")
    for k in ('reused', 'runs'):
        if k in res:
            number(res[k], f"'{k}'", whole=True)
    if 'setups' in res:
        if not isinstance(res['setups'], list):
            bad("'setups'", f"is {shown(res['setups'])}, not a list")
        for i, s in enumerate(res['setups']):
            obj(s, f"setups[{i}]", keys=('setup', 'shares'))
            text(s['setup'], f"setups[{i}].setup")
            number(s['shares'], f"setups[{i}].shares", whole=True)
    for name, a in obj(res['arms'], "'arms'").items():
        here = f"arm '{name}'"
        obj(a, here, keys=('cost', 'views'))
        number(a['cost'], f"{here}: cost")
        if not isinstance(a['views'], dict) or not a['views']:
            bad(f"{here}: views", f"is {shown(a['views'])}, not an object of views")
        for view, v in a['views'].items():
            at = f"{here}, view '{view}':"
            if view not in VIEWS:
                bad(f"{here}:", f"has a view '{view}'; a lab's views are {' and '.join(VIEWS)}")
            obj(v, at, keys=('iters', 'runs', 'stats'))
            number(v['iters'], f"{at} iters", whole=True)
            if not isinstance(v['runs'], list) or not v['runs']:
                bad(f"{at} runs", f"is {shown(v['runs'])}, not a list of runs")
            for i, run in enumerate(v['runs']):
                obj(run, f"{at} runs[{i}]", keys=('seed', 'elapsed_s'))
                number(run['seed'], f"{at} runs[{i}].seed", whole=True)
                number(run['elapsed_s'], f"{at} runs[{i}].elapsed_s")
                if metric in run:
                    number(run[metric], f"{at} runs[{i}].{metric}")
            if metric not in obj(v['stats'], f"{at} stats"):
                bad(f"{at} stats", f"has no '{metric}' (the lab's metric)")
            for k, s in v['stats'].items():
                obj(s, f"{at} stats.{k}", keys=('mean', 'std', 'min', 'max'))
                for q in ('mean', 'std', 'min', 'max'):
                    number(s[q], f"{at} stats.{k}.{q}")
            if 'vs_baseline' in v:
                p = obj(v['vs_baseline'], f"{at} vs_baseline",
                        keys=('diffs', 'wins', 'mean', 'low', 'high', 'verdict'))
                numbers(p['diffs'], f"{at} vs_baseline.diffs")
                number(p['wins'], f"{at} vs_baseline.wins", whole=True)
                for q in ('mean', 'low', 'high'):
                    number(p[q], f"{at} vs_baseline.{q}", none=True)
                if (p['low'] is None) != (p['high'] is None) or \
                        (p['low'] is not None and p['mean'] is None):
                    bad(f"{at} vs_baseline", "has an interval without both ends and a mean")
                text(p['verdict'], f"{at} vs_baseline.verdict")
                if 'arm' in p:
                    text(p['arm'], f"{at} vs_baseline.arm")
        if a.get('curve'):
            c = obj(a['curve'], f"{here}: curve", keys=('tokens', 'wall_s'))
            for axis in ('tokens', 'wall_s'):
                line = obj(c[axis], f"{here}: curve.{axis}", keys=('x', 'mean', 'min', 'max'))
                for q in ('x', 'mean', 'min', 'max'):
                    numbers(line[q], f"{here}: curve.{axis}.{q}")
                if len({len(line[q]) for q in ('x', 'mean', 'min', 'max')}) != 1:
                    bad(f"{here}: curve.{axis}", "has lists x, mean, min, max of unequal lengths")
        if a.get('to_target') is not None:
            t = obj(a['to_target'], f"{here}: to_target",
                    keys=('token_forwards', 'seeds_reached', 'seeds'))
            number(t['token_forwards'], f"{here}: to_target.token_forwards", none=True)
            for q in ('seeds_reached', 'seeds'):
                number(t[q], f"{here}: to_target.{q}", whole=True)


# ---- the pictures: 19.2 inches wide at 100 dpi is 1920 pixels, so 14 pt text stays readable from
# the back of a room. A verdict is told by its word, its marker's shape and its colour (Okabe-Ito,
# safe for colour-blind readers); one colour per seed.
SIZE, DPI = (19.2, 10.8), 100
FONTS = {'font.size': 16, 'axes.titlesize': 18, 'axes.labelsize': 16, 'xtick.labelsize': 14,
         'ytick.labelsize': 14, 'legend.fontsize': 14, 'figure.titlesize': 20}
PANELS = ('steps', 'compute')  # left to right
VERDICT_COLOURS = {'helps': '#0072B2', 'hurts': '#D55E00', 'no evidence': '#666666',
                   'too few seeds': '#7A7A7A'}
VERDICT_MARKERS = {'helps': '^', 'hurts': 'v', 'no evidence': 'o', 'too few seeds': 'D'}
VERDICT_MEANING = {'helps': 'helps: interval right of 0', 'hurts': 'hurts: interval left of 0',
                   'no evidence': 'no evidence: interval spans 0',
                   'too few seeds': 'too few seeds for an interval'}
# the forest plot's height: a fixed part (titles, axis, legend) and a part per row
FOREST_INCHES = {'fixed': 3.0, 'row': 1.3, 'least': 5.4}
SEED_OFFSET = 0.3  # the seeds' points sit this far (in rows) under their row's bar


def pyplot():
    import matplotlib
    matplotlib.use('Agg')  # files only: works on a server with no display
    import matplotlib.pyplot as plt
    return plt


def figure(plt, n_panels, ncols=None, size=SIZE):
    """A figure (1920x1080 unless size says) of n_panels axes in a grid, as a flat list."""
    ncols = ncols or n_panels
    nrows = -(-n_panels // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=size, squeeze=False)
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
    return all(a['views'].get('steps', {}).get('iters')
               == a['views'].get('compute', {}).get('iters') for a in res['arms'].values())


def view_title(res, view):
    if view == 'compute' and same_runs(res):
        return f"{VIEWS[view]} (the same runs)"
    return VIEWS[view]


def reference(res, a):
    """The arm this arm is compared with (the baseline, or the lab's 'versus')."""
    return next((v['vs_baseline'].get('arm', res['baseline']) for v in a['views'].values()
                 if 'vs_baseline' in v), res['baseline'])


def forest_height(n_rows):
    """Inches: the rows' room and the titles', never less than a readable least."""
    h = FOREST_INCHES
    return max(h['least'], h['fixed'] + h['row'] * n_rows)


def plot_forest(res, path):
    """Each arm's mean paired difference from the arm it is compared with (arm minus that arm), its
    95% interval and one point per seed, one panel per view; the verdict is a word, a marker shape
    and a colour. An interval right of 0 helps, left of 0 hurts. The height follows the rows."""
    from matplotlib.lines import Line2D
    plt, metric = pyplot(), res['metric']
    rows = [(name, a) for name, a in res['arms'].items()
            if any('vs_baseline' in v for v in a['views'].values())]
    refs = list(dict.fromkeys(reference(res, a) for _, a in rows)) or [res['baseline']]
    minus = refs[0] if len(refs) == 1 else "its 'vs' arm"
    height = forest_height(len(rows))
    ends = [x for _, a in rows for v in a['views'].values() if 'vs_baseline' in v
            for x in [v['vs_baseline']['low'], v['vs_baseline']['high'],
                      *v['vs_baseline']['diffs']] if x is not None]
    low, high = min([0] + ends), max([0] + ends)
    pad = 0.15 * (high - low or 1)
    low, high = low - pad, high + pad
    verdicts = set()
    with plt.rc_context(FONTS):
        fig, axes = figure(plt, 2, size=(SIZE[0], height))
        for ax, view in zip(axes, PANELS):
            for y, (name, a) in enumerate(rows):
                p = a['views'].get(view, {}).get('vs_baseline')
                if p is None or p['mean'] is None:
                    continue
                verdicts.add(p['verdict'])
                colour = VERDICT_COLOURS.get(p['verdict'], 'black')
                if p['low'] is not None:
                    ax.plot([p['low'], p['high']], [y, y], color=colour, linewidth=5,
                            solid_capstyle='butt')
                    label = f"{p['mean']:+.1f} [{p['low']:+.1f}, {p['high']:+.1f}]  {p['verdict']}"
                else:
                    label = f"{p['mean']:+.1f}  {p['verdict']}"
                # the seeds under the bar, each its own filled circle; a darker spot is two seeds
                ax.plot(p['diffs'], [y + SEED_OFFSET] * len(p['diffs']), 'o', color=colour,
                        markersize=10, alpha=0.8, markeredgecolor='white', markeredgewidth=1,
                        zorder=3)
                ax.plot(p['mean'], y, VERDICT_MARKERS.get(p['verdict'], 's'), color=colour,
                        markersize=18, markeredgecolor='black', markeredgewidth=1.2, zorder=4)
                # centred over the mean, or kept inside the panel near its edges
                where = (p['mean'] - low) / (high - low)
                ha = 'left' if where < 0.25 else 'right' if where > 0.75 else 'center'
                ax.annotate(label, (p['mean'], y), xytext=(0, 16), textcoords='offset points',
                            ha=ha, color=colour, fontsize=16, zorder=5,
                            bbox={'facecolor': 'white', 'edgecolor': 'none', 'pad': 1})
            ax.axvline(0, color='black', linewidth=1.5)
            ax.set_yticks(range(len(rows)), [f"{name}\nvs {reference(res, a)}" for name, a in rows])
            # the first arm on top; room above each bar for its label, under it for the seeds
            ax.set_ylim(len(rows) - 1 + SEED_OFFSET + 0.35, -0.65)
            ax.set(title=view_title(res, view),
                   xlabel=f"{metric}: arm minus {minus} (points)\n"
                          f"right of 0: the arm is better, left of 0: worse")
            ax.grid(axis='x', alpha=0.3)
        for ax in axes:
            ax.set_xlim(low, high)
        axes[1].tick_params(labelleft=False)
        shown = [v for v in VERDICT_MARKERS if v in verdicts or v != 'too few seeds']
        handles = [Line2D([], [], color=VERDICT_COLOURS[v], marker=VERDICT_MARKERS[v],
                          markersize=16, markeredgecolor='black', linewidth=5,
                          label=VERDICT_MEANING[v]) for v in shown]
        handles.append(Line2D([], [], color='#666666', marker='o', markersize=10, linestyle='none',
                              label='one seed'))
        fig.legend(handles=handles, loc='lower center', ncol=len(handles), frameon=False)
        save(fig, plt, path, f"lab '{res['lab']}': paired differences, arm minus {minus}, "
                             f"n = {len(res['seeds'])} seed{'s' * (len(res['seeds']) != 1)}: "
                             f"marker mean, bar 95% interval, "
                             f"dots seeds",
             bottom=0.65 / height)


def plot_scores(res, path):
    """One panel per view: each arm's final scores, one point per seed, and a line through each
    seed's points across the arms, so the pairing the verdicts rest on shows; a black bar is each
    arm's mean."""
    plt, metric, arms = pyplot(), res['metric'], res['arms']
    seeds = sorted({run['seed'] for a in arms.values() for v in a['views'].values()
                    for run in v['runs']})
    with plt.rc_context(FONTS):
        fig, axes = figure(plt, 2)
        for ax, view in zip(axes, PANELS):
            for k, seed in enumerate(seeds):
                points = [(i, run[metric]) for i, a in enumerate(arms.values())
                          if view in a['views'] for run in a['views'][view]['runs']
                          if run['seed'] == seed and metric in run]
                if points:
                    ax.plot(*zip(*points), '-o', color=f'C{k % 10}', linewidth=1.5, markersize=8,
                            alpha=0.8, label=f'seed {seed}')
            for i, a in enumerate(arms.values()):
                if view in a['views']:
                    ax.plot([i - 0.25, i + 0.25], [a['views'][view]['stats'][metric]['mean']] * 2,
                            color='black', linewidth=4)
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
    """Equal-compute learning curves: one panel per arm against token-forwards (its mean over seeds
    as a line, the band from the lowest to the highest seed, the baseline's mean dashed for
    reference), and a last panel of every arm's mean against wall time, with a legend. Every arm
    ends at the same budget. Pooled results' runs ran on many machines, which the wall-time axis
    says (and how many setups, when the results list them)."""
    plt, metric, base = pyplot(), res['metric'], res['baseline']
    curves = [(i, name, a['curve']) for i, (name, a) in enumerate(res['arms'].items())
              if a.get('curve')]
    ref = res['arms'].get(base, {}).get('curve')
    n = len(curves) + 1
    ncols = min(n, 4) if n != 5 else 3
    with plt.rc_context(FONTS):
        fig, axes = figure(plt, n, ncols=ncols)
        for ax, (i, name, c) in zip(axes, curves):
            x = [v / 1e6 for v in c['tokens']['x']]
            ax.fill_between(x, c['tokens']['min'], c['tokens']['max'], color=f'C{i}', alpha=0.25)
            ax.plot(x, c['tokens']['mean'], color=f'C{i}', marker='o', linewidth=3)
            if ref and name != base:
                ax.plot([v / 1e6 for v in ref['tokens']['x']], ref['tokens']['mean'], color='black',
                        linestyle='--', linewidth=2)
            ax.set_title(name, color=f'C{i}')
            ax.set(xlabel='token-forwards (millions)')
        wall = axes[-1]
        for i, name, c in curves:
            wall.plot(c['wall_s']['x'], c['wall_s']['mean'], color=f'C{i}', marker='o',
                      linewidth=2.5, label=name)
        title = 'every arm: wall time'
        if res.get('setups'):  # a panel of four is narrow: on a line of its own
            title += f"\n{len(res['setups'])} setup{'s' * (len(res['setups']) != 1)} pooled"
        machines = 'each run on its own machine' if 'pooled' in res else 'this machine'
        wall.set(title=title, xlabel=f'wall seconds\n({machines})' if ncols > 3
                 else f'wall seconds ({machines})')
        for k, ax in enumerate(axes):
            ax.axhline(res['target'], color='gray', linestyle=':', linewidth=1.5)
            ax.set(ylim=(0, 100))
            ax.grid(alpha=0.3)
            if k % ncols == 0:
                ax.set_ylabel(f'{metric} (%)')
        wall.legend(loc='upper left')  # the curves start low and rise: the corner they leave
        save(fig, plt, path, f"lab '{res['lab']}', equal compute: line mean, band min..max of "
                             f"seeds, dashed {base}, dotted {res['target']:g}%")


def main(argv):
    if not argv:
        raise ValueError("give one or more lab results folders, e.g. "
                         "python labs/report.py labs/results/methods")
    for out_dir in argv:
        redraw(out_dir)
        print(f"redrew {out_dir}: results.md, results_forest.png, results.png, "
              f"results_curves.png")


if __name__ == '__main__':
    run_main(lambda: main(sys.argv[1:]))  # a missing folder or a damaged results.json: one line
