"""labs/labs.py: the plan of runs, skipping finished runs, the aggregation over seeds, and a tiny lab end to end."""
import json
import math
import os
import subprocess

import pytest

from labs import labs

TINY = ['--n_layer=1', '--n_head=2', '--n_embd=16', '--block_size=32', '--batch_size=8', '--eval_iters=1',
        '--eval_examples=8', '--toy_n_train=100', '--toy_n_val=8', '--toy_max_len=5', '--warmup_iters=1',
        '--eval_interval=2', '--device=cpu']
TWO_ARMS = {'arms': {'causal': {'method': 'causal'}, 'bitune': {'method': 'bitune'}}}


@pytest.fixture
def tiny_lab(monkeypatch):
    monkeypatch.setitem(labs.LABS, 'tiny', TWO_ARMS)
    return 'tiny'


def fake_log(run, rows, argv=None):
    """What a run leaves behind, written by hand: its log rows and the command it ran."""
    os.makedirs(run['out_dir'], exist_ok=True)
    with open(os.path.join(run['out_dir'], 'log.jsonl'), 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in rows)
    with open(os.path.join(run['out_dir'], 'argv.json'), 'w') as f:
        json.dump(argv or run['argv'], f)


def test_aggregation_over_seeds_matches_hand_computed_values(tiny_lab, tmp_path, monkeypatch):
    monkeypatch.setattr(labs, 'cost', lambda cfg: 1.0)  # the token count has its own test
    opts, rest = labs.parse_args([f'--lab={tiny_lab}', '--seeds=1,2,3', '--max_iters=10', f'--out_dir={tmp_path}'])
    runs = labs.plan(opts, rest)
    assert len(runs) == 6 and {(r['arm'], r['seed']) for r in runs} == {(a, s) for a in TWO_ARMS['arms']
                                                                        for s in (1, 2, 3)}
    em = {('causal', 1): (40, 60), ('causal', 2): (50, 90), ('causal', 3): (90, 30),
          ('bitune', 1): (70, 20), ('bitune', 2): (70, 20), ('bitune', 3): (10, 80)}
    for r in runs:
        overall, c = em[r['arm'], r['seed']]
        early = {'iter': 5, 'exact_match': 0.0, 'em_C': 0.0, 'elapsed_s': 1.0}  # an earlier row: must be ignored
        fake_log(r, [early, {'iter': 10, 'exact_match': overall, 'em_C': c, 'elapsed_s': 7.0, 'val_loss': 1.0}])
    # bitune seed 3 stopped early and causal seed 3 ran with other settings: neither is a finished run
    bitune3 = next(r for r in runs if r['arm'] == 'bitune' and r['seed'] == 3)
    fake_log(bitune3, [{'iter': 5, 'exact_match': 10.0, 'em_C': 80.0, 'elapsed_s': 1.0}])
    causal3 = next(r for r in runs if r['arm'] == 'causal' and r['seed'] == 3)
    fake_log(causal3, [{'iter': 10, 'exact_match': 99.0, 'em_C': 99.0, 'elapsed_s': 1.0}],
             argv=causal3['argv'] + ['--learning_rate=1'])
    assert [labs.finished(r) for r in runs].count(True) == 4

    arms = labs.aggregate(runs)
    causal, bitune = arms['causal'], arms['bitune']
    assert len(causal['runs']) == 2 and len(bitune['runs']) == 2
    # causal: exact match 40, 50 -> mean 45, sample std sqrt((25 + 25) / 1); em_C 60, 90 -> 75, sqrt(450)
    assert causal['exact_match']['mean'] == pytest.approx(45.0)
    assert causal['exact_match']['std'] == pytest.approx(math.sqrt(50))
    assert (causal['exact_match']['min'], causal['exact_match']['max']) == (40, 50)
    assert causal['em_C']['mean'] == pytest.approx(75.0) and causal['em_C']['std'] == pytest.approx(math.sqrt(450))
    assert bitune['exact_match'] == {'mean': 70, 'std': 0.0, 'min': 70, 'max': 70, 'values': [70, 70]}
    assert 'val_loss' not in causal  # only task metrics are aggregated

    # with all three causal seeds: 40, 50, 90 -> mean 60, sample std sqrt((400 + 100 + 900) / 2)
    fake_log(causal3, [{'iter': 10, 'exact_match': 90.0, 'em_C': 30.0, 'elapsed_s': 1.0}])
    arms = labs.aggregate(runs)
    assert arms['causal']['exact_match']['std'] == pytest.approx(math.sqrt(700))
    assert arms['causal']['em_C']['mean'] == pytest.approx(60.0)

    labs.write_results(arms, str(tmp_path), 'tiny')
    md = (tmp_path / 'results.md').read_text()
    assert '| causal | 3 | 1.00x | 5 | 60.0 ± 26.5 (40.0..90.0) | 60.0 ± 30.0 (30.0..90.0) |' in md
    assert '| bitune | 2 | 1.00x | 7 | 70.0 ± 0.0 (70.0..70.0) | 20.0 ± 0.0 (20.0..20.0) |' in md
    saved = json.loads((tmp_path / 'results.json').read_text())
    assert saved['arms']['causal']['exact_match']['values'] == [40, 50, 90]
    assert (tmp_path / 'results.png').stat().st_size > 0


def test_cost_counts_bitune_token_forwards(monkeypatch):
    from data import tasks
    import train
    from configurator import configure
    # two examples: prompt 5 + answer 3, prompt 7 + answer 5 -> causal reads 8 + 12 = 20 tokens
    fake = {'train': [{'prompt': [0] * 5, 'answer': [0] * 3}, {'prompt': [0] * 7, 'answer': [0] * 5}]}
    monkeypatch.setattr(tasks, 'load_task', lambda *a, **k: fake)
    cfg = configure(train.DEFAULTS, [labs.CONFIG])
    assert labs.cost({**cfg, 'method': 'causal'}) == 1.0
    # full: (P-1) + (P-1) + (A+1) = 4+4+4 and 6+6+6 -> 30 / 20
    assert labs.cost({**cfg, 'method': 'bitune'}) == pytest.approx(1.5)
    # naive has no causal prefix pass: 4+4 and 6+6 -> 20 / 20
    assert labs.cost({**cfg, 'method': 'bitune', 'bitune_variant': 'naive'}) == pytest.approx(1.0)


@pytest.mark.parametrize('argv, message', [
    (['--lab=nope'], 'choose one of methods'),
    (['--lab=methods', '--seed=3'], 'use --seeds'),
    (['--lab=methods', '--seeds=1,x'], 'write e.g. --seeds=1,2,3'),
    (['--lab=methods', '--max_iter=5'], 'did you mean max_iters'),  # a typo fails before any run starts
])
def test_bad_options_fail_before_any_run(argv, message, monkeypatch):
    monkeypatch.setattr(labs, 'launch', lambda *a: pytest.fail('no run should start'))
    with pytest.raises(ValueError, match=message):
        labs.main(argv)


def test_a_tiny_lab_runs_skips_finished_runs_and_writes_results(tiny_lab, tmp_path, monkeypatch):
    import train
    commands = []

    def train_here(cmd, env, **kw):
        """`python train.py ...` in this process: starting four Pythons with torch takes longer than the runs."""
        commands.append(cmd)
        assert cmd[1] == 'train.py' and int(env['OMP_NUM_THREADS']) >= 1
        train.main(cmd[2:])
        return subprocess.CompletedProcess(cmd, 0)
    monkeypatch.setattr(labs.subprocess, 'run', train_here)
    argv = [f'--lab={tiny_lab}', '--seeds=1,2', '--max_iters=2', f'--out_dir={tmp_path}', *TINY]
    runs = labs.main(argv)
    assert len(runs) == len(commands) == 4 and all(labs.finished(r) for r in runs)
    assert all(os.path.exists(os.path.join(r['out_dir'], 'train.txt')) for r in runs)
    results = json.loads((tmp_path / 'results.json').read_text())
    for arm in ('causal', 'bitune'):
        a = results['arms'][arm]
        finals = [labs.last_row(r['out_dir'])['exact_match'] for r in runs if r['arm'] == arm]
        assert len(a['runs']) == 2 and a['exact_match']['values'] == finals
        assert set(a) >= {'em_C', 'em_R', 'em_S', 'em_D'}
    assert results['arms']['bitune']['cost'] > 1.2  # the prompt prefix is read twice
    assert (tmp_path / 'results.png').stat().st_size > 0 and '| causal | 2 |' in (tmp_path / 'results.md').read_text()
    # the same command again: nothing re-runs
    monkeypatch.setattr(labs, 'launch', lambda *a: pytest.fail('a finished run was started again'))
    labs.main(argv)
