"""labs/report.py: the pictures of a lab from its results dict alone, sized for a projector, and the
redraw from a results folder."""
import glob
import json
import os
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


def test_every_picture_is_1920x1080_with_no_text_under_14_pt(figures):
    res = fake_results()
    report.plot_forest(res, 'unused')
    report.plot_scores(res, 'unused')
    report.plot_curves(res, 'unused')
    assert len(figures) == 3
    for fig, title in figures:
        fig.canvas.draw()  # makes the tick labels
        w, h = fig.get_size_inches() * report.DPI
        assert (round(w), round(h)) == (1920, 1080)
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
    with open(path) as f:
        res = json.load(f)
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
    for name in ('results_forest.png', 'results.png', 'results_curves.png'):
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
    assert png_size(tmp_path / 'results_forest.png') == (1920, 1080)
    assert (tmp_path / 'results.png').exists()
    assert not (tmp_path / 'results_curves.png').exists()
