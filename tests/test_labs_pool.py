"""A class runs a lab together: each student runs one seed (--seeds=N, perhaps --arms=...) and hands
in share_s<N>.json; the teacher pools the shares (--pool=FOLDER) into the same tables as one lab
over those seeds, refusing a share of other settings or code, and a seed handed in twice."""
import json
import os
import shutil

import pytest

from labs import labs, runner
from test_labs import TINY, TWO_ARMS, TrainHere, tiny_lab, train_here  # noqa: F401 (fixtures)
from utils.rundir import read_log

SHORT = ['--max_iters=2', '--evals=1', *TINY]
CLASS = ','.join(map(str, range(11, 31)))  # 20 students' seeds


@pytest.fixture(scope='module')
def whole(tmp_path_factory):
    """The tiny lab over seeds 11 to 30, a class of 20, by one labs.py: its out_dir, with a share
    per seed (once for this file's tests, which only read it)."""
    out = tmp_path_factory.mktemp('whole')
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(labs.LABS, 'tiny', TWO_ARMS)
        mp.setattr(runner.subprocess, 'Popen', TrainHere)
        mp.setattr(TrainHere, 'commands', [])
        labs.main(['--lab=tiny', f'--seeds={CLASS}', f'--out_dir={out}', *SHORT])
    return out


def hand_in(folder, *shares):
    """Each share into its own student's folder under folder, as a class hands them in."""
    for i, share in enumerate(shares):
        os.makedirs(folder / f'student{i}', exist_ok=True)
        shutil.copy(share, folder / f'student{i}')
    return folder


def results(folder):
    return json.loads((folder / 'results.json').read_text())


def test_pooled_shares_give_the_numbers_of_one_lab_over_the_same_seeds(whole, tiny_lab, tmp_path):
    share = json.loads((whole / 'share_s12.json').read_text())
    assert (share['lab'], share['seed'], share['arms']) == (tiny_lab, 12, ['causal', 'bitune'])
    assert [(r['arm'], r['views'], r['max_iters']) for r in share['runs']] == \
        [('causal', ['steps'], 2), ('causal', ['compute'], 3), ('bitune', ['steps', 'compute'], 2)]
    run = share['runs'][2]
    assert set(run) == {'arm', 'seed', 'views', 'max_iters', 'tokens_per_step', 'cost',
                        'fingerprint', 'rows'}
    assert run['rows'] == read_log(whole / 'bitune' / 's12') and run['cost'] > 1.2
    assert run['fingerprint']['settings']['seed'] == 12 and len(run['fingerprint']['code']) == 64
    assert (whole / 'share_s12.json').stat().st_size < 20_000  # rows and settings, no checkpoints
    expected = {k: v for k, v in results(whole).items() if k not in ('runs', 'reused')}
    pooled = lambda folder: {  # noqa: E731
        k: v for k, v in results(folder).items() if k != 'pooled'}
    tables = lambda folder: [  # noqa: E731
        line for line in (folder / 'results.md').read_text().splitlines()
        if not line.startswith(('Pooled:', 'Reused runs:'))]
    seeds = [*range(30, 20, -1), *range(11, 21)]
    folder = hand_in(tmp_path / 'class', *(whole / f'share_s{s}.json' for s in seeds))
    labs.main([f'--lab={tiny_lab}', f'--pool={folder}', *SHORT])
    # every number, timings included: the same rows, one code path
    assert pooled(folder) == expected
    assert tables(folder) == tables(whole)
    assert sorted(os.path.basename(p) for p in results(folder)['pooled']) == \
        sorted(f'share_s{s}.json' for s in range(11, 31))
    assert 'Pooled: n = 20 seeds, from 20 share file(s) or run folder(s)' in \
        (folder / 'results.md').read_text()
    # a full lab's run folders pool the same, without its shares
    tree = tmp_path / 'tree'
    shutil.copytree(whole, tree, ignore=shutil.ignore_patterns('share_s*', 'results*'))
    labs.main([f'--lab={tiny_lab}', f'--pool={tree}', f'--out_dir={tmp_path / "tables"}', *SHORT])
    assert pooled(tmp_path / 'tables') == expected


def test_a_student_runs_some_arms_at_the_whole_labs_budget_and_a_seed_is_handed_in_once(
        whole, tiny_lab, tmp_path, train_here, capsys):
    student = tmp_path / 'student'
    labs.main([f'--lab={tiny_lab}', '--arms=causal', '--seeds=12', f'--out_dir={student}', *SHORT])
    assert f"share: {student / 'share_s12.json'} (hand it in" in capsys.readouterr().out
    mine, theirs = (json.loads((d / 'share_s12.json').read_text())['runs']
                    for d in (student, whole))
    # causal at equal compute trains Bitune's budget (3 steps) though Bitune is not among the arms
    assert [r['max_iters'] for r in mine] == [2, 3]
    timing = ('elapsed_s', 'tokens_per_s')
    # the very runs of the whole lab: the same settings, code and numbers
    for a, b in zip(mine, theirs):
        assert a['fingerprint'] == b['fingerprint']
        assert [{k: v for k, v in row.items() if k not in timing} for row in a['rows']] == \
            [{k: v for k, v in row.items() if k not in timing} for row in b['rows']]
    folder = hand_in(tmp_path / 'class', whole / 'share_s12.json', student / 'share_s12.json')
    first, second = (folder / f'student{i}' / 'share_s12.json' for i in (0, 1))
    with pytest.raises(ValueError, match=f"seed 12 is handed in twice: {first} and {second}"):
        labs.main([f'--lab={tiny_lab}', f'--pool={folder}', *SHORT])


@pytest.mark.parametrize('change, message', [
    (lambda fp: fp['settings'].update(learning_rate=0.5),
     r"other settings \(learning_rate=0.5, not 0.001\)"),
    (lambda fp: fp.update(code='0' * 64), 'other code'),
])
def test_a_share_of_other_settings_or_code_is_refused_naming_the_file(whole, tiny_lab, tmp_path,
                                                                     change, message):
    folder = hand_in(tmp_path / 'class', whole / 'share_s11.json', whole / 'share_s12.json')
    path = folder / 'student1' / 'share_s12.json'
    share = json.loads(path.read_text())
    change(share['runs'][1]['fingerprint'])
    path.write_text(json.dumps(share))
    with pytest.raises(ValueError,
                       match=f"{path}: its 'causal' run of seed 12 was made with {message}"):
        labs.main([f'--lab={tiny_lab}', f'--pool={folder}', *SHORT])
    # so is a pool command of other settings than the students ran
    path.write_text((whole / 'share_s12.json').read_text())
    with pytest.raises(ValueError, match='other settings'):
        labs.main([f'--lab={tiny_lab}', f'--pool={folder}', *SHORT, '--n_embd=32'])


def test_some_arms_plan_the_whole_labs_runs_of_those_arms(tmp_path):
    def runs(*argv):
        opts, rest = labs.read_options(['--lab=methods', '--seeds=3', f'--out_dir={tmp_path}',
                                        *argv])
        planned = labs.plan(opts, rest)
        return {(r['arm'], r['views']): (r['cfg'], r['fingerprint']) for r in planned}, opts
    some, opts = runs('--arms=causal,bai')
    every, _ = runs()
    assert set(some) == {('causal', ('steps',)), ('causal', ('compute',)), ('bai', ('steps',)),
                         ('bai', ('compute',))}
    assert all(some[k] == every[k] for k in some)  # Bitune, the costliest, sets the budget still
    assert opts['budget']['arm'] == 'bitune' and some['bai', ('compute',)][0]['max_iters'] > 700
