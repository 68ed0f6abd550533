"""labs/report.py: the pictures of a lab from its results dict alone, sized for a projector, and the
redraw from a results folder."""
import glob
import json
import os
import re
import struct

import pytest

from helpers import ROOT
from labs import report, stats


def fake_results(seeds=(1, 2, 3), **extra):
    """A two-view lab of three arms: 'b' gains 10 on every seed, 'c' is compared with 'b' (a lab's
    'versus')."""
    scores = {'a': {s: 50.0 + s for s in seeds}, 'b': {s: 60.0 + s + (s % 2) for s in seeds},
              'c': {s: 40.0 + 3 * s for s in seeds}}
    arms = {}
    for name, by_seed in scores.items():
        runs = [{'seed': s, 'elapsed_s': 2.0, 'exact_match': y} for s, y in by_seed.items()]
        view = {'iters': 10, 'runs': runs,
                'stats': {'exact_match': stats.summary(by_seed.values())}}
        curve = {'x': [0, 5, 10], 'mean': [0, 30, 60], 'min': [0, 20, 50], 'max': [0, 40, 70]}
        # the baseline trains longer for equal compute, so the two views are different runs
        arms[name] = {'cost': 1.0, 'tokens_per_step': 100,
                      'views': {'steps': view,
                                'compute': {**view, 'iters': 15 if name == 'a' else 10}},
                      'curve': {'tokens': curve, 'wall_s': curve}, 'to_target': None}
    for name, ref in (('b', 'a'), ('c', 'b')):
        for v in arms[name]['views']:
            paired = {**stats.paired(scores[name], scores[ref]), 'arm': ref}
            arms[name]['views'][v] = {**arms[name]['views'][v], 'vs_baseline': paired}
    return {'lab': 'fake', 'metric': 'exact_match', 'baseline': 'a', 'target': 50.0,
            'seeds': list(seeds), 'max_iters': 10, 'budget': {'arm': 'a', 'token_forwards': 1000.0},
            'arms': arms, **extra}


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions would save, kept open instead."""
    kept = []
    def keep(fig, plt, path, title, bottom=0.0):
        report.finish(fig, title, bottom)
        kept.append((fig, title))
    monkeypatch.setattr(report, 'save', keep)
    yield kept
    import matplotlib.pyplot as plt
    for fig, _ in kept:
        plt.close(fig)


def texts(fig):
    import matplotlib.text
    return [t for t in fig.findobj(matplotlib.text.Text)
            if t.get_text().strip() and t.get_visible()]


def test_every_picture_is_1920_wide_with_no_text_under_14_pt(figures):
    res = fake_results()
    report.plot_forest(res, 'unused')
    report.plot_scores(res, 'unused')
    report.plot_curves(res, 'unused')
    assert len(figures) == 3
    for k, (fig, title) in enumerate(figures):
        fig.canvas.draw()  # makes the tick labels
        w, h = fig.get_size_inches() * report.DPI
        # the forest plot as tall as its rows need, the others 1920x1080
        assert round(w) == 1920 and (k == 0 or round(h) == 1080), (title, w, h)
        sizes = [t.get_fontsize() for t in texts(fig)]
        assert sizes and min(sizes) >= 14, [(t.get_text(), t.get_fontsize()) for t in texts(fig)
                                            if t.get_fontsize() < 14]


def test_the_forest_shows_each_interval_in_its_verdicts_colour_and_a_zero_line(figures):
    res = fake_results()
    report.plot_forest(res, 'unused')
    (fig, title), = figures
    steps, compute = fig.axes[:2]
    # steps on the left
    assert steps.get_title() == 'Equal steps' and compute.get_title() == 'Equal compute'
    b = res['arms']['b']['views']['steps']['vs_baseline']  # +10 or +11 on every seed: helps
    c = res['arms']['c']['views']['steps']['vs_baseline']  # vs b, not the baseline
    assert b['verdict'] == 'helps' and c['verdict'] != 'helps'
    bars = {tuple(line.get_xdata()): line.get_color() for line in steps.get_lines()
            if len(line.get_xdata()) == 2}
    assert bars[(b['low'], b['high'])] == report.VERDICT_COLOURS['helps']
    assert bars[(c['low'], c['high'])] == report.VERDICT_COLOURS[c['verdict']]
    assert any(list(line.get_xdata()) == [0, 0] for line in steps.get_lines())  # the zero line
    labels = [t.get_text() for t in steps.get_yticklabels()]
    assert labels == ['b\nvs a', 'c\nvs b']
    label = f"{b['mean']:+.1f} [{b['low']:+.1f}, {b['high']:+.1f}]  helps"
    assert label in [t.get_text() for t in texts(fig)]


def test_final_scores_link_each_seed_across_the_arms(figures):
    res = fake_results(seeds=(1, 2, 3, 4))
    report.plot_scores(res, 'unused')
    (fig, _), = figures
    seed_lines = {line.get_label(): list(line.get_ydata()) for line in fig.axes[0].get_lines()
                  if line.get_label().startswith('seed')}
    # seed 2's score in a, b, c: one line through them
    assert seed_lines['seed 2'] == [52.0, 62.0, 46.0]
    assert len(seed_lines) == 4


def test_curves_get_a_panel_per_arm_and_one_for_wall_time(figures):
    report.plot_curves(fake_results(), 'unused')
    (fig, _), = figures
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ['a', 'b', 'c', 'every arm: wall time']
    assert len(visible[0].collections) == 1  # one band per panel: bands never overlap


def test_results_md_notes_reused_runs_and_pooled_shares_only_when_given():
    plain = '\n'.join(report.tables(fake_results()))
    assert 'Reused runs' not in plain and 'Pooled' not in plain
    noted = '\n'.join(report.tables(fake_results(seeds=(11, 12, 13), reused=4,
                                                 pooled=['share_s11.json', 'share_s12.json'])))
    assert 'Reused runs: 4 of ' in noted
    assert 'Pooled: n = 3 seeds, from 2 share file(s)' in noted


@pytest.mark.parametrize('path', sorted(glob.glob(
    os.path.join(ROOT, 'labs', 'results', '**', 'results.json'), recursive=True)))
def test_every_published_lab_draws_from_its_results_json(path, monkeypatch):
    figures = []
    monkeypatch.setattr(report, 'save',
                        lambda fig, plt, *_, **__: (figures.append((fig, None)), plt.close(fig)))
    res = report.read_results(path)  # every published results.json passes the reader's checks
    report.plot_forest(res, 'unused')
    report.plot_scores(res, 'unused')
    report.plot_curves(res, 'unused')
    assert len(figures) == 3
    forest = figures[0][0].axes[0]
    # every arm but the baseline has a row
    assert len(forest.get_yticklabels()) == len(res['arms']) - 1


def png_size(path):
    with open(path, 'rb') as f:
        head = f.read(24)
    assert head[:8] == b'\x89PNG\r\n\x1a\n'
    return struct.unpack('>II', head[16:24])


def test_redraw_writes_the_tables_and_three_pictures_from_results_json(tmp_path, capsys):
    (tmp_path / 'results.json').write_text(json.dumps(fake_results(pooled=2)))
    report.main([str(tmp_path)])
    assert 'redrew' in capsys.readouterr().out
    assert png_size(tmp_path / 'results_forest.png')[0] == 1920
    for name in ('results.png', 'results_curves.png'):
        assert png_size(tmp_path / name) == (1920, 1080)
    assert 'Pooled: n = 3 seeds, from 2 share file(s)' in (tmp_path / 'results.md').read_text()
    with pytest.raises(ValueError, match='no results.json in .*labs/results/methods'):
        report.main([str(tmp_path / 'nowhere')])
    with pytest.raises(ValueError, match='give one or more'):
        report.main([])


def test_results_without_learning_curves_draw_the_other_pictures(tmp_path):
    res = fake_results()
    for arm in res['arms'].values():
        del arm['curve']
    report.write_results(res, str(tmp_path))
    assert png_size(tmp_path / 'results_forest.png')[0] == 1920
    assert (tmp_path / 'results.png').exists()
    assert not (tmp_path / 'results_curves.png').exists()


# ---- the pictures read from the back of a room: which way is better, seeds, verdicts, heights

def with_rows(n):
    """fake_results with n rows in the forest plot: 'b' (vs a), then copies of it."""
    res = fake_results()
    del res['arms']['c']
    for k in range(1, n):
        res['arms'][f'b{k}'] = res['arms']['b']
    return res


def test_the_forest_says_which_way_is_better_and_is_as_tall_as_its_rows(figures):
    for n in (1, 6):
        report.plot_forest(with_rows(n), 'unused')
    (one, title), (six, _) = figures
    steps = one.axes[0]
    assert steps.get_xlabel() == ('exact_match: arm minus a (points)\n'
                                  'right of 0: the arm is better, left of 0: worse')
    assert 'arm minus a' in title
    # a one-row panel is not a 1080-pixel-tall empty panel; six rows get room of their own
    heights = [fig.get_size_inches()[1] * report.DPI for fig in (one, six)]
    assert [fig.get_size_inches()[0] * report.DPI for fig in (one, six)] == [1920, 1920]
    assert 500 <= heights[0] <= 600 and heights[1] >= 1000
    # arms compared with different arms: the axis says so
    report.plot_forest(fake_results(), 'unused')
    assert figures[2][0].axes[0].get_xlabel().startswith("exact_match: arm minus its 'vs' arm")


def test_the_forest_draws_each_seed_as_a_big_point_beside_the_bar_and_tells_verdicts_by_shape(
        figures):
    res = fake_results()
    report.plot_forest(res, 'unused')
    (fig, title), = figures
    steps = fig.axes[0]
    b = res['arms']['b']['views']['steps']['vs_baseline']
    lines = steps.get_lines()
    bar, = [line for line in lines if list(line.get_xdata()) == [b['low'], b['high']]]
    seeds, = [line for line in lines if list(line.get_xdata()) == b['diffs']]
    assert seeds.get_marker() == 'o' and seeds.get_markersize() >= 10
    # beside the bar (row 0), not under it, and drawn above it
    assert set(seeds.get_ydata()) == {report.SEED_OFFSET} and bar.get_ydata()[0] == 0
    assert seeds.get_zorder() > bar.get_zorder()
    means = {line.get_marker(): line.get_color() for line in lines if len(line.get_xdata()) == 1}
    assert means['^'] == report.VERDICT_COLOURS['helps'] == '#0072B2'  # Okabe-Ito blue
    assert report.VERDICT_COLOURS['hurts'] == '#D55E00'  # vermillion
    assert len(set(report.VERDICT_MARKERS.values())) == len(report.VERDICT_MARKERS)
    # the legend names every verdict in words, with its marker; the title names no colour
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert [label.split(':')[0] for label in legend] == ['helps', 'hurts', 'no evidence',
                                                          'one seed']
    assert not re.search(r'\b(green|red|blue|grey)\b', title), title


def test_the_wall_time_panel_has_a_legend_and_says_whose_machines_ran_it(figures):
    report.plot_curves(fake_results(), 'unused')
    setups = [{'setup': 'cpu, AMD EPYC', 'shares': 2}, {'setup': 'cuda, H100', 'shares': 1}]
    report.plot_curves(fake_results(pooled=['s1.json', 's2.json', 's3.json'], setups=setups),
                       'unused')
    (here, _), (pooled, _) = figures
    words = lambda ax: ' '.join(ax.get_xlabel().split())  # noqa: E731 (two lines in 4 columns)
    wall = [ax for ax in here.axes if ax.get_visible()][-1]
    assert words(wall) == 'wall seconds (this machine)'
    assert [t.get_text() for t in wall.get_legend().get_texts()] == ['a', 'b', 'c']
    wall = [ax for ax in pooled.axes if ax.get_visible()][-1]
    assert words(wall) == 'wall seconds (each run on its own machine)'
    assert wall.get_title() == 'every arm: wall time\n2 setups pooled'


def test_results_md_lists_the_setups_pooled_with_their_shares():
    setups = [{'setup': 'cpu, AMD EPYC', 'shares': 2}, {'setup': 'cuda, H100', 'shares': 1}]
    lines = report.tables(fake_results(pooled=['s1.json', 's2.json', 's3.json'], setups=setups))
    pooled, = [line for line in lines if line.startswith('Pooled:')]
    assert pooled.endswith('Setups pooled (2): cpu, AMD EPYC (2 shares); cuda, H100 (1 share).')


# ---- results.json is read as untrusted input: each damage is one line naming the file, the place
# and what to do

def damaged(edit):
    """fake_results' results.json text, edited."""
    res = fake_results()
    edit(res)
    return json.dumps(res).encode()


def nan_mean(res):
    view = res['arms']['b']['views']['compute']  # its own stats, not the steps view's
    view['stats'] = {**view['stats'],
                     'exact_match': {**view['stats']['exact_match'], 'mean': float('nan')}}


def inf_seed(res):
    res['arms']['c']['views']['steps']['vs_baseline']['diffs'][1] = float('inf')


def nan_curve(res):
    res['arms']['a']['curve']['tokens']['mean'][1] = float('nan')


WHOLE = json.dumps(fake_results()).encode()
DAMAGES = {
    'truncated': (WHOLE[:len(WHOLE) // 2], 'ends in the middle of the results (cut short'),
    'not utf-8': (b'\xff\xfe{"lab": 1}', 'is not UTF-8 text'),
    'not json': (WHOLE.replace(b'"arms"', b'arms', 1), 'is not JSON at line 1, column'),
    'a json list': (b'[1, 2]', "holds a list, not a lab's results"),
    'no arms': (damaged(lambda res: res.pop('arms')), "has no 'arms'"),
    'text target': (damaged(lambda res: res.update(target='50')),
                    "'target' is the text '50', not a number"),
    'nan mean': (damaged(nan_mean), "arm 'b', view 'compute': stats.exact_match.mean is nan, "
                                    "not a finite number"),
    'inf seed': (damaged(inf_seed), "arm 'c', view 'steps': vs_baseline.diffs[1] is inf"),
    'nan curve': (damaged(nan_curve), "arm 'a': curve.tokens.mean[1] is nan"),
}


@pytest.mark.parametrize('case', list(DAMAGES))
def test_a_damaged_results_json_is_one_line_naming_the_file_the_place_and_what_to_do(
        case, tmp_path, capsys):
    from utils.runtime import run_main
    data, says = DAMAGES[case]
    (tmp_path / 'results.json').write_bytes(data)
    with pytest.raises(SystemExit) as e:
        run_main(lambda: report.main([str(tmp_path)]))
    err = capsys.readouterr().err
    assert e.value.code == 1 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: {tmp_path / 'results.json'}") and says in err, err
    assert 'rerun the lab that wrote it: python labs/labs.py --lab=' in err
    if case not in ('not utf-8', 'a json list'):  # the lab's name, when the file still says it
        assert '--lab=fake' in err
    assert 'looks like a bug' not in err
    assert sorted(os.listdir(tmp_path)) == ['results.json']  # nothing drawn, nothing rewritten


def test_results_with_a_number_that_is_not_finite_are_not_written(tmp_path):
    res = fake_results()
    nan_mean(res)
    with pytest.raises(ValueError, match="arm 'b', view 'compute': stats.exact_match.mean is nan"):
        report.write_results(res, str(tmp_path / 'lab'))
    assert not (tmp_path / 'lab').exists()  # no results.md with 'nan' in it, no picture
