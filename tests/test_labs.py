"""labs/: the statistics, the plan of runs (both views, --quick), skipping finished runs, the
aggregation over seeds, and a tiny lab end to end."""
import json
import math
import os
import subprocess
from types import SimpleNamespace

import pytest

from labs import aggregate, labs, report, runner, stats
from utils.rundir import read_log

TINY = ['--n_layer=1', '--n_head=2', '--n_embd=16', '--block_size=32', '--batch_size=8',
        '--eval_iters=1', '--eval_examples=8', '--toy_n_train=100', '--toy_n_val=8',
        '--toy_max_len=5', '--warmup_iters=1', '--device=cpu']
TWO_ARMS = {'arms': {'causal': {'method': 'causal'}, 'bitune': {'method': 'bitune'}},
            'baseline': 'causal'}


@pytest.fixture
def tiny_lab(monkeypatch):
    monkeypatch.setitem(labs.LABS, 'tiny', TWO_ARMS)
    return 'tiny'


# ---- the statistics

def test_paired_t_interval_and_verdicts_on_hand_made_numbers():
    # differences 1..5: mean 3, std sqrt(2.5), t(0.975, 4 df) = 2.7764
    # -> 3 ± 2.7764 * sqrt(2.5 / 5)
    arm, base = {s: 10 + 2 * s for s in range(1, 6)}, {s: 10 + s for s in range(1, 6)}
    p = stats.paired(arm, base)
    half = 2.776445 * math.sqrt(2.5 / 5)
    assert p['diffs'] == [1, 2, 3, 4, 5] and p['wins'] == 5
    assert (p['mean'], p['low'], p['high']) == pytest.approx((3, 3 - half, 3 + half))
    assert p['low'] == pytest.approx(1.037, abs=1e-3) and p['verdict'] == 'helps'
    assert stats.paired(base, arm)['verdict'] == 'hurts'  # the same numbers the other way round
    # differences 1, 2, 3: mean 2, std 1, t(2 df) = 4.3027 -> [-0.484, 4.484]: it straddles 0
    p = stats.paired({1: 41, 2: 52, 3: 63}, {1: 40, 2: 50, 3: 60})
    half = 4.302653 / math.sqrt(3)
    assert (p['low'], p['high']) == pytest.approx((2 - half, 2 + half))
    # three wins out of three are not enough here
    assert p['verdict'] == 'no evidence' and p['wins'] == 3
    # only the seeds both arms ran are paired; one seed gives no interval
    assert stats.paired({1: 50, 2: 60, 7: 0}, {1: 40, 2: 40, 3: 99})['diffs'] == [10, 20]
    assert stats.paired({1: 50}, {1: 40}) == {'seeds': [1], 'diffs': [10], 'wins': 1, 'mean': 10,
                                              'low': None, 'high': None, 'verdict': 'too few seeds'}
    # 80 seeds: t(79 df) = 1.9905, not a table's last entry (2.042 at 30 df)
    std = stats.summary([0.0, 1.0] * 40)['std']
    assert stats.t_interval([0.0, 1.0] * 40)[2] == pytest.approx(0.5 + 1.9905 * std / math.sqrt(80),
                                                                 abs=1e-4)


# 97.5% quantiles of Student's t to 4 decimals (any printed table, or scipy.stats.t.ppf)
T975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 9: 2.2622, 19: 2.0930,
        29: 2.0452, 30: 2.0423, 39: 2.0227, 60: 2.0003, 120: 1.9799}


@pytest.mark.parametrize('df', T975)
def test_t_quantiles_are_exact_to_four_decimals_for_any_degrees_of_freedom(df):
    assert round(stats.t_quantile(0.975, df), 4) == T975[df]
    assert stats.t_cdf(stats.t_quantile(0.975, df), df) == pytest.approx(0.975, abs=1e-12)
    assert stats.t_quantile(0.975, 10**7) == pytest.approx(1.959964, abs=1e-6)  # the normal's


def test_curve_mean_band_and_threshold_interpolation():
    # 60 at x=100, 90 at x=200: 80 is two thirds of the way -> 166.7
    assert stats.first_crossing([0, 100, 200], [0, 60, 90], 80) == \
        pytest.approx(100 + 100 * 20 / 30)
    assert stats.first_crossing([0, 100, 200], [0, 60, 90], 95) is None  # never reached
    assert stats.first_crossing([0, 100], [85, 90], 80) == 0  # already there at the start
    assert stats.first_crossing([0, 100, 200, 300], [0, 85, 70, 95], 80) == \
        pytest.approx(100 * 80 / 85)  # the first
    curve = stats.mean_curve([[(0, 10), (5, 50), (10, 70)], [(0, 20), (5, 30)],
                              [(0, 0), (5, 40), (10, 90)]])
    # where every seed got to
    assert curve == {'x': [0, 5], 'mean': [10, 40], 'min': [0, 30], 'max': [20, 50]}
    # wall times differ a little: averaged
    assert stats.mean_curve([[(1.0, 5)], [(3.0, 7)]])['x'] == [2.0]


# ---- the plan: two views, the budget, --quick

def test_equal_compute_gives_cheaper_arms_more_iterations_in_the_cost_ratio(tmp_path):
    opts, rest = labs.read_options(['--lab=methods', '--max_iters=500', f'--out_dir={tmp_path}'])
    runs = labs.plan(opts, rest)
    assert opts['seeds'] == [1, 2, 3, 4, 5]
    by = {(r['arm'], r['views']): r for r in runs if r['seed'] == 1}
    bitune, causal = by['bitune', ('steps', 'compute')], by['causal', ('compute',)]
    assert by['causal', ('steps',)]['cfg']['max_iters'] == bitune['cfg']['max_iters'] == 500
    ratio = aggregate.cost(bitune['cfg'])
    assert 1.4 < ratio < 1.6  # the prompt prefix read twice, on the lab's data
    # 758: causal trains longer on the same budget
    assert causal['cfg']['max_iters'] == round(500 * ratio)
    budget = 500 * bitune['tokens_per_step']
    assert abs(causal['cfg']['max_iters'] * causal['tokens_per_step'] - budget) <= \
        causal['tokens_per_step'] / 2
    # the costliest arms run once per seed, for both views; the others twice
    assert sorted((r['arm'], r['views']) for r in runs if r['seed'] == 1) == sorted(by)
    assert len(runs) == 5 * 6
    # five evaluations per run, whatever its length, for the curves
    assert causal['cfg']['eval_interval'] == 152 and bitune['cfg']['eval_interval'] == 100
    assert len({r['out_dir'] for r in runs}) == len(runs)


def test_ablation_variants_without_pass_b_get_the_longer_runs(tmp_path):
    opts, rest = labs.read_options(['--lab=bitune_ablations', '--seeds=1', f'--out_dir={tmp_path}'])
    iters = {(r['arm'], r['views']): r['cfg']['max_iters'] for r in labs.plan(opts, rest)}
    assert iters['full', ('steps', 'compute')] == iters['shared', ('steps', 'compute')] == 500
    # one prompt pass, not two
    assert iters['naive', ('compute',)] == iters['no_mixing', ('compute',)] > 700
    assert len(iters) == 7


def test_finetune_lab_tunes_every_adapter_kind_from_a_longer_base_each_bitune_arm_against_its_kind(
        tmp_path):
    from configurator import check_train_config
    import train
    opts, rest = labs.read_options(['--lab=finetune', '--seeds=1,2', f'--out_dir={tmp_path}'])
    runs = labs.plan(opts, rest)
    bases = [r for r in runs if r['arm'] == 'base']
    assert [(r['stage'], r['cfg']['max_iters'], r['cfg']['peft'], r['cfg']['toy_ops'])
            for r in bases] == [(0, 500, 'none', 'C')] * 2
    tuned = {(r['arm'], r['seed'], r['views']): r for r in runs if r['arm'] != 'base'}
    # the arms fine-tune from their own seed's base at the lab's 300 steps; causal arms also at
    # equal compute
    assert tuned['dora_bitune', 2, ('steps', 'compute')]['cfg']['init_from'] == \
        os.path.join(bases[1]['out_dir'], 'ckpt.pt')
    assert tuned['ia3_causal', 1, ('steps',)]['cfg']['max_iters'] == 300
    assert tuned['ia3_causal', 1, ('compute',)]['cfg']['max_iters'] > 400
    assert {(r['cfg']['peft'], r['cfg']['lora_r']) for (arm, *_), r in tuned.items()
            if arm.endswith('r16')} == {('lora', 16), ('dora', 16)}
    for r in runs:  # train.py accepts every run
        check_train_config(SimpleNamespace(**r['cfg']), train.DEFAULTS)
    # each Bitune arm is paired with the causal arm of its own kind; the others with the lab's
    # baseline
    for r in runs:
        if r['arm'] != 'base':
            em = 50.0 + 10 * r['seed'] + (20 if r['arm'] == 'ia3_bitune' else 0) \
                - (30 if r['arm'] == 'ia3_causal' else 0)
            fake_log(r, [{'iter': r['cfg']['max_iters'], 'exact_match': em, 'elapsed_s': 1.0}])
    res = aggregate.aggregate(runs, opts, labs.LABS[opts['lab']])
    ia3 = res['arms']['ia3_bitune']['views']['steps']['vs_baseline']
    assert ia3['arm'] == 'ia3_causal' and ia3['diffs'] == [50, 50]
    assert res['arms']['ia3_causal']['views']['steps']['vs_baseline']['arm'] == 'lora_causal_r16'
    assert res['arms']['lora_bitune']['views']['steps']['vs_baseline']['diffs'] == [0, 0]
    lines = report.tables(res)
    assert any(line.startswith('| ia3_bitune |') and '] vs ia3_causal |' in line for line in lines)


def test_bitune_bai_lab_varies_one_pivot_setting_per_arm_at_bitunes_cost(tmp_path):
    from configurator import check_train_config
    import train
    opts, rest = labs.read_options(['--lab=bitune_bai', '--seeds=1', f'--out_dir={tmp_path}'])
    runs = {r['arm']: r for r in labs.plan(opts, rest)}
    # every arm reads as much as Bitune: one run each
    assert opts['baseline'] == 'bitune' and len(runs) == 5
    assert all(r['views'] == ('steps', 'compute') and r['cfg']['max_iters'] == 500
               for r in runs.values())
    changed = {arm: {k: r['cfg'][k] for k in ('method', 'bai_pivots', 'bai_layer', 'bai_loss')
                     if r['cfg'][k] != train.DEFAULTS[k]} for arm, r in runs.items()}
    ln_f = {'method': 'bitune_bai', 'bai_layer': -1}  # pivots after ln_f, not the default's block
    assert changed == {'bitune': {}, 'bitune_bai (A, ln_f, mse)': ln_f,
                       'cosine': {**ln_f, 'bai_loss': 'cosine'},
                       'layer 2': {'method': 'bitune_bai', 'bai_layer': 2},
                       'pass B': {**ln_f, 'bai_pivots': 'B'}}
    for r in runs.values():  # train.py accepts every arm
        check_train_config(SimpleNamespace(**r['cfg']), train.DEFAULTS)


def test_quick_plans_a_small_grid(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    opts, rest = labs.read_options(['--lab=bitune_ablations', '--quick'])
    runs = labs.plan(opts, rest)
    assert opts['seeds'] == [1, 2, 3]
    assert opts['out_dir'].endswith(os.path.join('runs', 'bitune_ablations_quick'))
    assert len(runs) == 3 * 7 and opts['target'] == 50
    assert all(r['cfg']['n_layer'] == 2 and r['cfg']['n_embd'] == 64 and
               r['cfg']['toy_max_len'] == 8 and
               r['cfg']['max_iters'] <= 2 * int(labs.QUICK['max_iters']) for r in runs)
    # equal compute holds here too
    assert max(r['cfg']['max_iters'] for r in runs) > int(labs.QUICK['max_iters'])
    # BAI's pivots from block 2 need a third block: left out of the 2-block quick grid, kept in the
    # full one
    opts, rest = labs.read_options(['--lab=bai_settings', '--quick', '--seeds=1'])
    assert 'layer 2, lambda 1' not in {r['arm'] for r in labs.plan(opts, rest)}
    assert len(labs.plan(opts, rest)) == 6
    opts, rest = labs.read_options(['--lab=bai_settings', '--seeds=1'])
    assert 'layer 2, lambda 1' in {r['arm'] for r in labs.plan(opts, rest)}
    opts, rest = labs.read_options(['--lab=bitune_bai', '--quick', '--seeds=1'])
    assert 'layer 2' not in {r['arm'] for r in labs.plan(opts, rest)}
    assert opts['baseline'] == 'bitune'
    # the rule is the model's, on each arm's own settings: BAI's default (-2) has no block on a
    # 1-block model
    monkeypatch.setitem(labs.LABS, 'tiny', {
        'arms': {'causal': {'method': 'causal'}, 'bai': {'method': 'bai'},
                 'bai ln_f': {'method': 'bai', 'bai_layer': -1}},
        'baseline': 'causal'})
    opts, rest = labs.read_options(['--lab=tiny', '--quick', '--seeds=1', '--n_layer=1'])
    assert {r['arm'] for r in labs.plan(opts, rest)} == {'causal', 'bai ln_f'}
    # your own settings still win
    opts, rest = labs.read_options(['--lab=methods', '--quick', '--seeds=4,5', '--n_layer=1',
                                    '--max_iters=50'])
    runs = labs.plan(opts, rest)
    assert {r['seed'] for r in runs} == {4, 5} and {r['cfg']['n_layer'] for r in runs} == {1}
    assert min(r['cfg']['max_iters'] for r in runs) == 50


def test_cost_and_tokens_per_step_count_bitune_token_forwards(monkeypatch):
    import bitune
    from data import tasks
    import train
    from configurator import configure
    # two examples: prompt 5 + answer 3, prompt 7 + answer 5 -> causal reads 8 + 12 = 20 tokens
    fake = {'train': [{'prompt': [0] * 5, 'answer': [0] * 3},
                      {'prompt': [0] * 7, 'answer': [0] * 5}]}
    monkeypatch.setattr(tasks, 'load_task', lambda *a, **k: fake)
    monkeypatch.setattr(aggregate, '_LENGTHS', {})  # no lengths remembered from the real data
    cfg = configure(train.DEFAULTS, [labs.CONFIG, '--batch_size=4',
                                     '--gradient_accumulation_steps=2'])
    assert aggregate.cost({**cfg, 'method': 'causal'}) == 1.0
    # full: (P-1) + (P-1) + (A+1) = 4+4+4 and 6+6+6 -> 30 / 20. The labs count one token per example
    # more than Pass C reads (bitune.tokens_read: A), the answer's end token, as every published
    # budget did
    assert aggregate.cost({**cfg, 'method': 'bitune'}) == pytest.approx(1.5)
    assert bitune.tokens_read(5, 3) + bitune.tokens_read(7, 5) == 30 - 2
    # naive has no causal prefix pass: 4+4 and 6+6 -> 20 / 20
    assert aggregate.cost({**cfg, 'method': 'bitune', 'bitune_variant': 'naive'}) == \
        pytest.approx(1.0)
    # 8 examples per step of mean length 10 -> 80 tokens, 120 for Bitune
    assert aggregate.tokens_per_step({**cfg, 'method': 'causal'}) == pytest.approx(80)
    assert aggregate.tokens_per_step({**cfg, 'method': 'bitune'}) == pytest.approx(120)


@pytest.mark.parametrize('argv, message', [
    (['--lab=nope'], 'choose one of methods'),
    (['--lab=methods', '--seed=3'], 'use --seeds'),
    (['--lab=methods', '--eval_interval=3'], 'use --evals'),
    (['--lab=methods', '--seeds=1,x'], 'write e.g. --seeds=1,2,3'),
    (['--lab=methods', '--baseline=nope'], "choose one of the lab's arms"),
    # a typo fails before any run starts
    (['--lab=methods', '--max_iter=5'], 'did you mean max_iters'),
])
def test_bad_options_fail_before_any_run(argv, message, monkeypatch):
    monkeypatch.setattr(runner, 'launch', lambda *a: pytest.fail('no run should start'))
    with pytest.raises(ValueError, match=message):
        labs.main(argv)


# ---- aggregation and the tables

def fake_log(run, rows, fingerprint=None):
    """What a finished run leaves behind, written by hand: its log rows and its run.json."""
    os.makedirs(run['out_dir'], exist_ok=True)
    with open(os.path.join(run['out_dir'], 'log.jsonl'), 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in rows)
    runner.write_json(os.path.join(run['out_dir'], 'run.json'),
                      {**runner.record(run), 'fingerprint': fingerprint or run['fingerprint']})


class TrainHere:
    """subprocess.Popen for `python train.py ...`, run in this process (starting Pythons with torch
    takes longer than tiny runs); `train` may stand in for train.main."""
    commands, train = [], None

    def __init__(self, cmd, env, cwd, **kw):
        import train
        assert cmd[1] == 'train.py' and int(env['OMP_NUM_THREADS']) >= 1 and kw['start_new_session']
        TrainHere.commands.append(cmd)
        self.pid, self.returncode = -1, 0
        # a lab reads logs, not a run's pictures, which take most of a tiny run's time
        drawn, train.plot_run = train.plot_run, lambda out_dir: []
        try:
            (TrainHere.train or train.main)(cmd[2:])
        finally:
            train.plot_run = drawn

    def poll(self):
        return self.returncode


def only_runs_here(mp):
    """runner's subprocess module with TrainHere as Popen, leaving every other user's (e.g.
    platform.processor(), which train.py asks, runs `uname -p`)."""
    mp.setattr(TrainHere, 'commands', [])
    mp.setattr(runner, 'subprocess', SimpleNamespace(**{**vars(subprocess), 'Popen': TrainHere}))


@pytest.fixture
def train_here(monkeypatch):
    only_runs_here(monkeypatch)
    return TrainHere


def test_aggregation_pairs_seeds_in_each_view(tiny_lab, tmp_path, monkeypatch):
    monkeypatch.setattr(aggregate, 'cost', lambda cfg: 1.5 if cfg['method'] == 'bitune' else 1.0)
    opts, rest = labs.read_options([f'--lab={tiny_lab}', '--seeds=1,2,3', '--max_iters=10',
                                    f'--out_dir={tmp_path}'])
    runs = labs.plan(opts, rest)
    assert sorted((r['arm'], r['views'], r['cfg']['max_iters'])
                  for r in runs if r['seed'] == 1) == \
        [('bitune', ('steps', 'compute'), 10), ('causal', ('compute',), 15),
         ('causal', ('steps',), 10)]
    # final exact match per (arm, view, seed); bitune's one run counts in both views
    final = {('causal', 'steps'): {1: 40, 2: 50, 3: 60},
             ('causal', 'compute'): {1: 30, 2: 40, 3: 50},
             ('bitune', 'steps'): {1: 41, 2: 52, 3: 63}}
    for r in runs:
        n, em = r['cfg']['max_iters'], final[r['arm'], r['views'][0]][r['seed']]
        # a curve: 0 at the start, 90 halfway (above the target for a moment), the final score at
        # the end
        fake_log(r, [{'iter': 0, 'exact_match': 0.0, 'em_C': 0.0, 'elapsed_s': 1.0},
                     {'iter': n // 2, 'exact_match': 90.0 if r['seed'] == 1 else 20.0, 'em_C': 0.0,
                      'elapsed_s': 2.0},
                     {'iter': n, 'exact_match': em, 'em_C': em / 2, 'elapsed_s': 7.0,
                      'val_loss': 1.0}])
    res = aggregate.aggregate(runs, opts, labs.LABS[opts['lab']])
    causal, bitune = res['arms']['causal'], res['arms']['bitune']
    assert causal['views']['steps']['stats']['exact_match']['std'] == pytest.approx(10)
    assert 'val_loss' not in causal['views']['steps']['stats']  # only task metrics are aggregated
    assert 'vs_baseline' not in causal['views']['steps']
    # equal steps: differences 1, 2, 3 -> no evidence; equal compute (causal 30, 40, 50): 11, 12, 13
    # -> helps
    steps = bitune['views']['steps']['vs_baseline']
    compute = bitune['views']['compute']['vs_baseline']
    assert steps['diffs'] == [1, 2, 3] and steps['verdict'] == 'no evidence'
    assert compute['diffs'] == [11, 12, 13] and compute['verdict'] == 'helps'
    assert compute['low'] == pytest.approx(12 - 4.302653 / math.sqrt(3))
    # the budget is bitune's 10 steps; causal's curve reaches it at 15 steps
    tokens = res['budget']['token_forwards']
    assert res['budget']['arm'] == 'bitune'
    assert tokens == pytest.approx(10 * bitune['tokens_per_step'])
    assert causal['curve']['tokens']['x'][-1] == pytest.approx(tokens, rel=0.05)
    # mean curve halfway: (90 + 20 + 20) / 3 = 43.3 < 80, so only seed 1 reaches 80 (at 80/90 of the
    # way there)
    assert causal['curve']['tokens']['mean'][1] == pytest.approx(130 / 3)
    assert causal['to_target'] == {'token_forwards': None, 'seeds_reached': 1, 'seeds': 3}
    # a run with other settings, or an unfinished one, is left out
    fake_log(runs[0], [{'iter': 10, 'exact_match': 99.0, 'elapsed_s': 1.0}],
             fingerprint={'settings': {}, 'code': ''})
    again = aggregate.aggregate(runs, opts, labs.LABS[opts['lab']])
    assert len(again['arms'][runs[0]['arm']]['views'][runs[0]['views'][0]]['runs']) == 2

    lines = '\n'.join(report.write_results(res, str(tmp_path)))
    assert '## Equal compute' in lines and '## Equal steps: 10 iterations per arm' in lines
    assert '| bitune | 1.50x | 10 | 7 | 52.0 ± 11.0 (41.0..63.0) | +12.0 [+9.5, +14.5] | 3/3 | ' \
           'helps | 26.0 |' in lines
    assert '| causal | 1.00x | 15 | 7 | 40.0 ± 10.0 (30.0..50.0) | (baseline) |' in lines
    assert '| causal | not reached |  | 1/3 |' in lines
    saved = json.loads((tmp_path / 'results.json').read_text())
    assert saved['arms']['bitune']['views']['compute']['vs_baseline']['verdict'] == 'helps'
    assert (tmp_path / 'results.png').stat().st_size > 0
    assert (tmp_path / 'results_curves.png').stat().st_size > 0


def test_a_tiny_lab_runs_skips_finished_runs_and_writes_results(tiny_lab, tmp_path, monkeypatch,
                                                                train_here):
    commands = train_here.commands
    argv = [f'--lab={tiny_lab}', '--seeds=1,2', '--max_iters=2', '--evals=2',
            f'--out_dir={tmp_path}', *TINY]
    runs = labs.main(argv)
    # per seed: causal at 2 steps and at equal compute (3 steps), Bitune once
    assert len(runs) == len(commands) == 6 and all(runner.finished(r) for r in runs)
    assert all(cmd[-1] == '--overwrite=True' for cmd in commands)  # an unfinished run starts over
    assert all(os.path.exists(os.path.join(r['out_dir'], 'train.txt')) for r in runs)
    results = json.loads((tmp_path / 'results.json').read_text())
    for arm in ('causal', 'bitune'):
        for view in ('steps', 'compute'):
            v = results['arms'][arm]['views'][view]
            finals = [read_log(r['out_dir'])[-1]['exact_match'] for r in runs
                      if r['arm'] == arm and view in r['views']]
            assert len(v['runs']) == 2 and v['stats']['exact_match']['values'] == finals
            assert set(v['stats']) >= {'em_C', 'em_R', 'em_S', 'em_D'}
        # iteration 0 and two evaluations
        assert len(results['arms'][arm]['curve']['tokens']['x']) == 3
    assert results['arms']['causal']['views']['compute']['iters'] == 3
    assert results['arms']['bitune']['cost'] > 1.2  # the prompt prefix is read twice
    assert results['arms']['bitune']['views']['compute']['vs_baseline']['seeds'] == [1, 2]
    assert '| causal | 1.00x | 2 |' in (tmp_path / 'results.md').read_text()
    # the same command again: nothing re-runs
    monkeypatch.setattr(runner, 'launch',
                        lambda *a: pytest.fail('a finished run was started again'))
    labs.main(argv)


def test_a_log_cut_off_mid_write_reads_up_to_its_last_whole_row(tmp_path):
    # killed while writing row 3
    (tmp_path / 'log.jsonl').write_text('{"iter": 0}\n{"iter": 5}\n{"iter": 1')
    assert read_log(str(tmp_path)) == [{'iter': 0}, {'iter': 5}]
    # damaged in the middle: refuse
    (tmp_path / 'log.jsonl').write_text('{"iter": 0}\n{"it\n{"iter": 10}\n')
    with pytest.raises(ValueError, match='line 2, is not JSON'):
        read_log(str(tmp_path))


def test_the_mixing_lab_varies_only_the_mixing_at_equal_cost(tmp_path):
    opts, rest = labs.read_options(['--lab=mixing', f'--out_dir={tmp_path}'])
    runs = labs.plan(opts, rest)
    # same cost: one view serves both
    assert len(runs) == 4 * 5 and {r['cfg']['max_iters'] for r in runs} == {500}
    cfg = {r['arm']: r['cfg'] for r in runs}
    assert cfg['fixed alpha 0.5']['bitune_variant'] == 'fixed'
    assert [cfg[f'learned, theta_init {t}']['bitune_theta_init']
            for t in ('0.1', '0.01', '0.001')] == [0.1, 0.01, 0.001]
