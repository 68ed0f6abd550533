"""A class runs a lab together: each student runs one seed (--seeds=N, perhaps --arms=...) and hands
in share_s<N>.json, which holds every finished run of that seed; the teacher pools the shares
(--pool=FOLDER, once or --watch as they land) into the same tables as one lab over those seeds,
refusing a share of other settings, code or dtype, and a seed handed in twice, and counting the
machines they ran on. (Files that are not what labs.py wrote: test_class_shares.py.)"""
import json
import os
import shutil
import sys

import pytest

from labs import labs, report, shares
from test_labs import TINY, TWO_ARMS, TrainHere, only_runs_here, tiny_lab, train_here  # noqa: F401
from utils.rundir import read_log
from utils.runtime import run_main

SHORT = ['--max_iters=2', '--evals=1', *TINY]
CLASS = ','.join(map(str, range(11, 31)))  # 20 students' seeds


@pytest.fixture(scope='module')
def whole(tmp_path_factory):
    """The tiny lab over seeds 11 to 30, a class of 20, by one labs.py: its out_dir, with a share
    per seed (once for this file's tests, which only read it)."""
    out = tmp_path_factory.mktemp('whole')
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(labs.LABS, 'tiny', TWO_ARMS)
        only_runs_here(mp)
        labs.main(['--lab=tiny', f'--seeds={CLASS}', f'--out_dir={out}', *SHORT])
    return out


def hand_in(folder, *files):
    """Each share into its own student's folder under folder, as a class hands them in."""
    for i, share in enumerate(files):
        os.makedirs(folder / f'student{i}', exist_ok=True)
        shutil.copy(share, folder / f'student{i}')
    return folder


# what train.py records in its log's first row (utils/rundir.setup_of), on a laptop
SETUP = {'device': 'cpu', 'dtype': 'float32', 'threads': 1, 'torch': '2.13.0+cpu',
         'os': 'Linux 6.18', 'processor': 'AMD EPYC'}


def fake_train(setup):
    """train.py in a hurry, on a machine of this setup: the log rows a run of these settings
    writes, with made-up scores, the setup in its first row."""
    def train(argv):
        import train
        from configurator import configure
        cfg = configure(train.DEFAULTS, argv)
        os.makedirs(cfg['out_dir'], exist_ok=True)
        rows = [{'iter': 0, 'exact_match': 0.0, 'em_C': 0.0, 'elapsed_s': 0.5, 'setup': setup},
                {'iter': cfg['max_iters'], 'exact_match': 40.0 + cfg['seed'] + cfg['max_iters'],
                 'em_C': 50.0, 'elapsed_s': 1.0}]
        with open(os.path.join(cfg['out_dir'], 'log.jsonl'), 'w') as f:
            f.writelines(json.dumps(row) + '\n' for row in rows)
    return train


def no_pictures(res, out_dir):
    """report.write_results without the pictures, which take most of a fake lab's time."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, 'results.json'), 'w') as f:
        json.dump(res, f)
    return report.tables(res)


def fake_lab(*argv, setup=SETUP, lab=TWO_ARMS):
    """labs.main(argv) on the lab 'tiny' (lab), its runs faked (fake_train) and drawn without
    pictures; returns how many runs it started."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(labs.LABS, 'tiny', lab)
        only_runs_here(mp)
        mp.setattr(TrainHere, 'train', fake_train(setup))
        mp.setattr(report, 'write_results', no_pictures)
        labs.main(['--lab=tiny', *argv, *SHORT])
        return len(TrainHere.commands)


def pool(folder, *argv, lab=TWO_ARMS):
    """The teacher's labs.py --pool=folder on the lab 'tiny', without pictures: its results."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(labs.LABS, 'tiny', lab)
        mp.setattr(report, 'write_results', no_pictures)
        labs.main(['--lab=tiny', f'--pool={folder}', *argv, *SHORT])
    return results(folder)


def results(folder):
    return json.loads((folder / 'results.json').read_text())


def test_pooled_shares_give_the_numbers_of_one_lab_over_the_same_seeds(whole, tiny_lab, tmp_path):
    share = json.loads((whole / 'share_s12.json').read_text())
    assert (share['lab'], share['seed'], share['arms']) == (tiny_lab, 12, ['causal', 'bitune'])
    assert [(r['arm'], r['views'], r['max_iters']) for r in share['runs']] == \
        [('causal', ['steps'], 2), ('causal', ['compute'], 3), ('bitune', ['steps', 'compute'], 2)]
    run = share['runs'][2]
    assert set(run) == {'arm', 'seed', 'views', 'max_iters', 'tokens_per_step', 'cost',
                        'fingerprint', 'setup', 'rows'}
    # what ran, from the log's first row: float32 (config/lab_toy.py), whatever the machine
    assert run['setup'] == run['rows'][0]['setup'] and run['setup']['dtype'] == 'float32'
    assert run['rows'] == read_log(whole / 'bitune' / 's12') and run['cost'] > 1.2
    assert run['fingerprint']['settings']['seed'] == 12 and len(run['fingerprint']['code']) == 64
    assert (whole / 'share_s12.json').stat().st_size < 20_000  # rows and settings, no checkpoints
    expected = {k: v for k, v in results(whole).items() if k not in ('runs', 'reused')}
    pooled = lambda folder: {  # noqa: E731
        k: v for k, v in results(folder).items() if k not in ('pooled', 'setups')}
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
    assert f"share: {student / 'share_s12.json'} holds causal (hand it in" in \
        capsys.readouterr().out
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


THREE = {'arms': {'causal': {'method': 'causal'}, 'bitune': {'method': 'bitune'},
                  'bai': {'method': 'bai', 'bai_layer': -1}}, 'baseline': 'causal'}


def test_a_share_holds_every_finished_run_of_its_seed_whatever_arms_each_command_named(tmp_path,
                                                                                      capsys):
    student = tmp_path / 'student'
    assert fake_lab('--arms=causal,bitune', '--seeds=1', f'--out_dir={student}', lab=THREE) == 3
    assert f"share: {student / 'share_s1.json'} holds causal, bitune (hand" in \
        capsys.readouterr().out
    # later, other arms into the same folder: causal is reused, Bitune's runs stay in the share
    assert fake_lab('--arms=causal,bai', '--seeds=1', f'--out_dir={student}', lab=THREE) == 2
    assert f"share: {student / 'share_s1.json'} holds causal, bitune, bai (hand" in \
        capsys.readouterr().out
    share = json.loads((student / 'share_s1.json').read_text())
    assert share['arms'] == ['causal', 'bitune', 'bai']
    assert [(r['arm'], r['views']) for r in share['runs']] == [
        ('causal', ['steps']), ('causal', ['compute']), ('bitune', ['steps', 'compute']),
        ('bai', ['steps']), ('bai', ['compute'])]
    assert all(r['setup'] == SETUP for r in share['runs'])
    res = pool(hand_in(tmp_path / 'class', student / 'share_s1.json'), lab=THREE)
    assert list(res['arms']) == ['causal', 'bitune', 'bai'] and res['seeds'] == [1]
    assert res['arms']['bai']['views']['compute']['iters'] == 3  # Bitune's budget
    # and a pool of some arms takes those
    assert list(pool(tmp_path / 'class', '--arms=causal,bai', lab=THREE)['arms']) == \
        ['causal', 'bai']


def test_shares_made_on_other_machines_pool_and_the_results_count_each_setup(tmp_path):
    gpu = {**SETUP, 'device': 'cuda', 'threads': 2, 'processor': 'NVIDIA H100 80GB HBM3'}
    for seed, setup in ((1, SETUP), (2, {**SETUP, 'threads': 2}), (3, gpu), (4, SETUP),
                        (5, {**SETUP, 'device': 'mps', 'processor': 'arm'}), (6, None)):
        fake_lab(f'--seeds={seed}', f'--out_dir={tmp_path / "lab"}', setup=setup)
    # a share made before runs recorded their setup; one made with --device=cuda --threads=2
    old = tmp_path / 'lab' / 'share_s6.json'
    share = json.loads(old.read_text())
    for run in share['runs']:
        del run['setup'], run['rows'][0]['setup']
    old.write_text(json.dumps(share))
    cuda = tmp_path / 'lab' / 'share_s3.json'
    share = json.loads(cuda.read_text())
    for run in share['runs']:
        run['fingerprint']['settings'].update(device='cuda', threads=2)
    cuda.write_text(json.dumps(share))
    res = pool(hand_in(tmp_path / 'class', *(tmp_path / 'lab' / f'share_s{s}.json'
                                             for s in range(1, 7))))
    assert res['seeds'] == [1, 2, 3, 4, 5, 6]
    assert res['setups'] == [
        {'setup': 'cpu, float32, 1 thread, torch 2.13.0+cpu, Linux 6.18, AMD EPYC', 'shares': 2},
        {'setup': 'cpu, float32, 2 threads, torch 2.13.0+cpu, Linux 6.18, AMD EPYC', 'shares': 1},
        {'setup': 'cuda, float32, 2 threads, torch 2.13.0+cpu, Linux 6.18, NVIDIA H100 80GB HBM3',
         'shares': 1},
        {'setup': 'mps, float32, 1 thread, torch 2.13.0+cpu, Linux 6.18, arm', 'shares': 1},
        {'setup': 'not recorded', 'shares': 1}]


def test_a_share_trained_in_another_dtype_is_another_experiment_refused_naming_it(tmp_path,
                                                                                 capsys):
    fake_lab('--seeds=1,2', f'--out_dir={tmp_path / "lab"}')
    fake_lab('--seeds=3', f'--out_dir={tmp_path / "gpu"}',
             setup={**SETUP, 'device': 'cuda', 'dtype': 'bfloat16'})
    folder = hand_in(tmp_path / 'class', tmp_path / 'lab' / 'share_s1.json',
                     tmp_path / 'gpu' / 'share_s3.json')
    capsys.readouterr()
    with pytest.raises(SystemExit):
        run_main(lambda: pool(folder))
    err = capsys.readouterr().err
    assert err == (f"error: {folder / 'student1' / 'share_s3.json'}, run 1 ('causal', steps) was "
                   f"trained in 'bfloat16', not float32, so it is another experiment (labs train "
                   f"in float32 on every device: config/lab_toy.py); make it again with this "
                   f"code\n")


def test_the_labs_train_in_float32_on_every_device():
    import train
    from configurator import configure
    assert configure(train.DEFAULTS, [labs.CONFIG])['dtype'] == 'float32'  # not 'auto'


def test_the_code_hash_is_the_same_with_windows_line_ends(tmp_path):
    for name in shares.CODE:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        with open(os.path.join(labs.ROOT, name), 'rb') as f:
            (tmp_path / name).write_bytes(f.read().replace(b'\n', b'\r\n'))
    assert b'\r\n' in (tmp_path / 'train.py').read_bytes()
    assert shares.code_hash(str(tmp_path)) == shares.code_hash()
    with open(tmp_path / 'model.py', 'ab') as f:  # an edit still counts
        f.write(b'# edited\r\n')
    assert shares.code_hash(str(tmp_path)) != shares.code_hash()


def test_native_windows_gets_one_line_that_says_to_use_wsl(monkeypatch, capsys):
    monkeypatch.setattr(labs, 'read_options', lambda *a: pytest.fail('nothing should run'))
    monkeypatch.setattr(sys, 'platform', 'win32')
    with pytest.raises(SystemExit) as e:
        run_main(lambda: labs.main(['--lab=methods']))
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count('\n') == 1
    assert err.startswith('error: labs.py does not run on native Windows') and 'in WSL' in err


def test_the_watch_loop_passes_again_only_when_a_share_lands_until_stopped(tmp_path):
    (tmp_path / 'notes.txt').write_text('not a share')
    landing = [lambda: (tmp_path / 'share_s1.json').write_text('{}'),
               lambda: (tmp_path / 'notes.txt').write_text('edited: no share changed'),
               lambda: (tmp_path / 'a').mkdir(),
               lambda: (tmp_path / 'a' / 'share_s2.json').write_text('{}'), lambda: None]
    passes, naps = [], []

    def sleep(seconds):
        naps.append(seconds)
        landing.pop(0)()
    shares.watch(str(tmp_path), lambda: passes.append(len(naps)), sleep=sleep,
                 stop=lambda: not landing)
    # at the start, after the first share, after the second; not for other files
    assert passes == [0, 1, 4] and naps == [1.0] * 5


def test_watch_pools_again_as_each_share_lands_and_ctrl_c_ends_it_cleanly(tmp_path, monkeypatch,
                                                                         capsys):
    fake_lab('--seeds=1,2,3', f'--out_dir={tmp_path / "lab"}')
    folder = hand_in(tmp_path / 'class', tmp_path / 'lab' / 'share_s1.json')
    bad = folder / 'student2' / 'share_s3.json'

    def ctrl_c():
        raise KeyboardInterrupt
    landing = [lambda: hand_in(folder, *(tmp_path / 'lab' / f'share_s{s}.json' for s in (1, 2))),
               lambda: (bad.parent.mkdir(), bad.write_text('{"lab": "tiny", "ru')), ctrl_c]
    real = shares.watch
    monkeypatch.setattr(shares, 'watch', lambda folder, one_pass: real(
        folder, one_pass, sleep=lambda s: landing.pop(0)()))
    capsys.readouterr()
    run_main(lambda: pool(folder, '--watch'))  # returns: exit status 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(' ', 1)[1] for line in out if ' n = ' in line] == \
        [f"n = {n} seeds ({seeds}) from {folder}" for n, seeds in
         ((1, '1'), (2, '1, 2'), (2, '1, 2'))]
    # each pass: each arm's difference with its interval (one seed: none)
    assert out[2] == '  bitune vs causal: equal steps +0.0 too few seeds; equal compute -1.0 too ' \
        'few seeds'
    assert sum(line.startswith('  bitune vs causal: equal steps +0.0 [+0.0, +0.0]')
               for line in out) == 2
    assert f"left out: {bad} is not JSON (cut short)" in '\n'.join(out)
    assert out[-1] == (f"stopped watching {folder}; the results of the last pool (n = 2) are in "
                       f"{folder}/{shares.RESULTS}")
    assert results(folder)['seeds'] == [1, 2] and not (folder / 'lock').exists()


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
