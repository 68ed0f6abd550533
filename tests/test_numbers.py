"""The numbers the handouts quote come from the labs' results: every 95% interval `[a, b]`, every
signed difference `+x.y`, every `mean ± std (min..max)` and `mean (min..max)` quoted in README.md,
docs/*.md, labs/README.md and labs/KEY.md must be, to one decimal as labs/report.py prints them, a
number of some labs/results/**/results.json. The handouts and the key are where the labs' numbers
live, so each must quote some; the README (a tutorial) and docs/ (reference) may quote none, but
what they do quote is checked the same way. A rerun lab that changes a number, or a typo, fails here
until the text follows. Paragraphs about the older 3-seed runs (they link an old_3seeds_* table) are
left out: those runs kept their tables but not their per-seed scores, so their intervals cannot be
recomputed."""
import glob
import json
import os
import re

import pytest

from helpers import ROOT

QUOTING = ['labs/README.md', 'labs/KEY.md']  # these must quote the labs' intervals
TEXTS = ['README.md', 'labs/STUDENT.md',
         *sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, 'docs', '*.md'))),
         *QUOTING]
NUM = r'[+-]?\d+\.\d'
INTERVAL = re.compile(rf'\[({NUM}), ({NUM})\]')
# +5.4 or -12.6, not inside [a, b] or a --flag=-0.1
SIGNED = re.compile(r'(?<![\w.=\[/-])([+-]\d+\.\d)(?![\d\]])')
SUMMARY = re.compile(r'(\d+\.\d) ± (\d+\.\d) \((\d+\.\d)\.\.(\d+\.\d)\)')
RANGE = re.compile(r'(?<!± )(?<![\d.])(\d+\.\d) \((\d+\.\d)\.\.(\d+\.\d)\)')


def r1(x):
    return round(x + 0.0, 1)  # as f'{x:.1f}' prints it


def known_numbers():
    """From every results.json: the paired comparisons' (low, high), their means, per-seed
    differences and the summaries' (mean, std, min, max), each rounded to one decimal."""
    known = {'interval': set(), 'signed': set(), 'summary': set(), 'range': set()}
    for path in glob.glob(os.path.join(ROOT, 'labs', 'results', '**', 'results.json'),
                          recursive=True):
        with open(path) as f:
            res = json.load(f)
        for arm in res['arms'].values():
            for view in arm['views'].values():
                p = view.get('vs_baseline')
                if p and p['low'] is not None:
                    known['interval'].add((r1(p['low']), r1(p['high'])))
                if p and p['mean'] is not None:
                    known['signed'].update(r1(x) for x in [p['mean'], *p['diffs']])
                for s in view['stats'].values():
                    known['summary'].add((r1(s['mean']), r1(s['std']), r1(s['min']), r1(s['max'])))
                    known['range'].add((r1(s['mean']), r1(s['min']), r1(s['max'])))
    known['signed'] |= {x for pair in known['interval'] for x in pair}
    return known


def paragraphs(text):
    """Blank-line paragraphs, list items and table rows each on their own."""
    return [p for block in re.split(r'\n\s*\n', text)
            for p in re.split(r'\n(?=\s*(?:[-|]|\d+\.) )', block)]


def unsupported(text, known):
    """The quoted numbers of text that no results.json has, as strings."""
    bad = []
    for p in paragraphs(text):
        if 'old_3seeds' in p:
            continue
        bad += [m.group(0) for m in INTERVAL.finditer(p)
                if (float(m.group(1)), float(m.group(2))) not in known['interval']]
        bad += [m.group(0) for m in SIGNED.finditer(p) if float(m.group(1)) not in known['signed']]
        bad += [m.group(0) for m in SUMMARY.finditer(p)
                if tuple(map(float, m.groups())) not in known['summary']]
        bad += [m.group(0) for m in RANGE.finditer(p)
                if tuple(map(float, m.groups())) not in known['range']]
    return bad


@pytest.fixture(scope='module')
def known():
    return known_numbers()


@pytest.mark.parametrize('name', TEXTS)
def test_every_quoted_number_is_in_a_results_json(name, known):
    path = os.path.join(ROOT, name)
    if not os.path.exists(path):
        pytest.skip(f'{name} does not exist in this checkout')
    with open(path) as f:
        text = f.read()
    if name in QUOTING:
        assert INTERVAL.search(text), f'{name} quotes no interval: is the pattern still right?'
    assert unsupported(text, known) == []


def test_a_made_up_number_fails(known):
    real = ('Bitune +5.4 [-2.7, +13.5] at equal steps; causal 65.4 ± 2.7 (62.6..69.2), '
            'quick 52.5 (38.5..77.0).')
    assert unsupported(real, known) == []
    assert unsupported('Bitune +5.4 [-2.7, +13.6] at equal steps.', known) == ['[-2.7, +13.6]']
    assert unsupported('it gained +7.7 points', known) == ['+7.7']
    assert unsupported('causal 65.4 ± 2.8 (62.6..69.2)', known) == ['65.4 ± 2.8 (62.6..69.2)']
    assert unsupported('causal 65.4 (62.6..69.3)', known) == ['65.4 (62.6..69.3)']
    # a paragraph about the older runs is not checked; the next one is
    assert unsupported('The older run ([table](old_3seeds_results.md)) had [+3.5, +24.4].\n\n'
                       'Now [+3.5, +24.4].', known) == ['[+3.5, +24.4]']
    # the rounding is report.py's: -0.5 stays -0.5, and a bound off by 0.1 is a different number
    assert (r1(-0.54), r1(-0.46)) == (-0.5, -0.5)


def test_every_interval_is_recomputed_from_the_per_seed_scores():
    """Each results.json's paired comparisons follow from its runs' final scores: the differences
    seed by seed, and the 95% t-interval on them with the exact t quantile (labs/stats.py)."""
    from labs import stats
    checked = 0
    for path in glob.glob(os.path.join(ROOT, 'labs', 'results', '**', 'results.json'),
                          recursive=True):
        with open(path) as f:
            res = json.load(f)
        metric = res['metric']
        for name, arm in res['arms'].items():
            for view, v in arm['views'].items():
                p = v.get('vs_baseline')
                if not p:
                    continue
                ref = res['arms'][p.get('arm', res['baseline'])]['views'][view]['runs']
                mine = {r['seed']: r[metric] for r in v['runs']}
                theirs = {r['seed']: r[metric] for r in ref}
                diffs = [mine[s] - theirs[s] for s in p['seeds']]
                assert diffs == pytest.approx(p['diffs']), (path, name, view)
                if p['low'] is not None:
                    _, low, high = stats.t_interval(diffs)
                    assert (low, high) == pytest.approx((p['low'], p['high']), abs=1e-9), \
                        (path, name, view)
                    assert p['verdict'] == stats.verdict(low, high)
                    checked += 1
    assert checked > 50  # every lab's comparisons, not none
