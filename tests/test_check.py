"""labs/check.py, the machine check for a class: the schedule of a share's runs, the versions and
the teacher's labs/class.json, and one check of a tiny lab end to end (a second of training)."""
import json
import os

import pytest
import torch

from labs import check, labs, shares
from test_labs import TINY

# the class's command on a tiny model: causal at 4 and 6 steps (equal compute), Bitune at 4, each
# evaluated at iteration 0 and twice more (every 2 or 3 iterations)
LAB = ['--lab=methods', '--arms=causal,bitune', '--seeds=11', '--jobs=2', '--max_iters=4',
       '--evals=2', *TINY]


@pytest.fixture
def tiny_plan(tmp_path):
    opts, passthrough = labs.read_options([*LAB, f'--out_dir={tmp_path / "runs"}'])
    return opts, labs.plan(opts, passthrough)


# ---- the schedule

def test_schedule_starts_the_longest_first_each_on_the_first_slot_to_come_free():
    # 150 and 100 start at once; 80 follows 100 on its slot at 100 and ends at 180, after 150
    assert check.schedule([100, 150, 80], 2) == 180
    assert check.schedule([100, 150, 80], 1) == 330  # one at a time: the sum
    assert check.schedule([100, 150, 80], 3) == check.schedule([100, 150, 80], 5) == 150
    # another order (keys, as run_all's sort keys): 80 and 100 first, 150 after 80 -> 230
    assert check.schedule([100, 150, 80], 2, keys=[1, 2, 0]) == 230
    # four runs on two slots: 60 | 50, then 40 on the 50's slot (90), 30 on the 60's (90)
    assert check.schedule([30, 60, 40, 50], 2) == 90
    assert check.schedule([], 2) == 0
    with pytest.raises(ValueError, match=r'jobs=0: .*--jobs=2'):
        check.schedule([1.0], 0)


def test_evaluations_count_the_one_at_iteration_0_and_the_last():
    assert check.evaluations({'max_iters': 500, 'eval_interval': 100}) == 6  # 0, 100, ..., 500
    assert check.evaluations({'max_iters': 758, 'eval_interval': 152}) == 6  # ..., 608, 758
    assert check.evaluations({'max_iters': 7, 'eval_interval': 2}) == 5      # 0, 2, 4, 6, 7


# ---- versions and labs/class.json

def test_versions_against_a_pip_range_and_a_version_prefix(tmp_path):
    assert check.release('2.13.0+cpu') == (2, 13, 0) and check.release('2.5.0.dev2024') == (2, 5, 0)
    assert check.satisfies('2.13.0+cpu', '>=2.1') is True
    assert check.satisfies('2.13.0+cpu', '>=2.1,<2.13') is False
    assert check.satisfies('2.13.0', '==2.13.*') is True
    assert check.satisfies('2.1', '==2.13.*') is False
    assert check.satisfies('2.13.0', '==2.13') is True  # 2.13 is 2.13.0
    assert check.satisfies('2.13.0', '~=2.1') is None   # not read: said so, not guessed
    assert check.torch_matches('2.13.0+cpu', '2.13') and check.torch_matches('2.13.0+cpu', '2')
    assert not check.torch_matches('2.13.0+cpu', '2.1')  # whole numbers, not characters
    assert check.torch_matches('2.13.0+cpu', '2.13.0+cpu')
    assert not check.torch_matches('2.13.0+cu121', '2.13.0+cpu')
    req = tmp_path / 'requirements.txt'
    req.write_text('numpy>=1.24\ntorchvision>=0.1\ntorch >= 2.1, <3   # first\n')
    assert check.torch_range(str(req)) == '>=2.1,<3'
    assert check.torch_range(str(tmp_path / 'none.txt')) is None
    assert 'in range' in check.torch_line('2.13.0+cpu', '>=2.1,<3')
    assert 'OUT OF RANGE' in check.torch_line('3.0.0', '>=2.1,<3')
    assert check.torch_range() == '>=2.1'  # the project's own requirements.txt


def test_class_json_says_match_or_mismatch_for_each_key_it_names(tmp_path):
    code, path = shares.code_hash(), tmp_path / 'class.json'
    assert check.against_class(code, '2.13.0+cpu', str(path)) == ([], None)  # no file: no lines
    path.write_text(json.dumps({'code': code[:12].upper(), 'torch': '2.13'}))
    lines, same = check.against_class(code, '2.13.0+cpu', str(path))
    assert same == {'code': True, 'torch': True}
    assert lines == [f"class.json: code hash match (here {code[:12]}, the class's {code[:12]})",
                     "class.json: torch match (here 2.13.0+cpu, the class's 2.13)"]
    other = ('0' if code[0] != '0' else '1') + code[1:]
    path.write_text(json.dumps({'code': other, 'torch': '2.12'}))
    lines, same = check.against_class(code, '2.13.0+cpu', str(path))
    assert same == {'code': False, 'torch': False}
    assert lines[0].startswith(f"class.json: code hash MISMATCH (here {code[:12]}, the class's "
                               f"{other[:12]}): this is another version of the code; `git pull`")
    assert lines[1].startswith("class.json: torch MISMATCH (here 2.13.0+cpu, the class's 2.12): "
                               "install torch 2.12")
    path.write_text(json.dumps({'torch': '2.13'}))  # only the torch version: only its line
    assert check.against_class(code, '2.13.0', str(path))[1] == {'torch': True}


@pytest.mark.parametrize('text, says', [
    ('{"code": "xyz"}', r"'code' is 'xyz', not 6 to 64 hex digits"),
    ('{"code": "' + '0' * 12 + '", "torh": "2.13"}', r"has keys it should not \(torh\)"),
    ('{"torch": 2.13}', r"'torch' is 2.13, not a version such as 2.13"),
    ('["2.13"]', "not an object with 'code' and/or 'torch'"),
    ('{"code": "abc', 'is not JSON \\(cut short\\)'),
    ('', 'is empty')])
def test_a_bad_class_json_is_one_error_that_names_it_and_says_how_to_write_it(tmp_path, text,
                                                                             says):
    path = tmp_path / 'class.json'
    path.write_text(text)
    with pytest.raises(ValueError, match=says) as e:
        check.against_class(shares.code_hash(), '2.13.0', str(path))
    assert str(path) in str(e.value) and 'write it as {"code": ' in str(e.value)
    assert '\n' not in str(e.value)


# ---- the check end to end

def test_check_times_each_arm_once_and_predicts_the_share_from_the_schedule(tiny_plan, tmp_path,
                                                                            capsys):
    opts, runs = tiny_plan
    assert [(r['arm'], r['cfg']['max_iters']) for r in runs] == \
        [('causal', 4), ('causal', 6), ('bitune', 4)]
    (tmp_path / 'class.json').write_text(json.dumps({'code': shares.code_hash()[:12],
                                                     'torch': str(torch.__version__)}))
    threads = torch.get_num_threads()
    info = check.check(opts, runs, seconds=0.2, max_steps=5,
                       class_file=str(tmp_path / 'class.json'))
    out = capsys.readouterr().out
    assert torch.get_num_threads() == threads  # the test process's own threads are given back
    assert info['code'] == shares.code_hash()[:12] and f"code hash {info['code']}:" in out
    assert 'every share of the class must show the same code hash' in out
    assert info['class'] == {'code': True, 'torch': True}
    assert 'class.json: code hash match' in out and 'class.json: torch match' in out
    assert info['torch'] == str(torch.__version__) and info['torch_ok'] is True
    assert (info['device'], info['dtype']) == ('cpu', 'float32')
    assert info['threads'] == max(1, check.cores() // 2)
    assert set(info['step_s']) == set(info['eval_s']) == {'causal', 'bitune'}
    assert all(v > 0 for v in [*info['step_s'].values(), *info['eval_s'].values()])
    # per run: iterations x step + evaluations (at 0, 2, 4 / 0, 3, 6) x evaluation
    assert info['start_s'] > 0  # measured: a Python importing train.py, and the task built
    for r, s, evals in zip(runs, info['run_s'], (3, 3, 3)):
        assert s == pytest.approx(info['start_s'] + r['cfg']['max_iters'] * info['step_s'][r['arm']]
                                  + evals * info['eval_s'][r['arm']])
    assert max(info['run_s']) <= info['predicted_s'] <= sum(info['run_s'])
    # the longest two start at once, the third after the first of them ends
    causal_6, bitune_4, causal_4 = info['run_s'][1], info['run_s'][2], info['run_s'][0]
    assert info['predicted_s'] == pytest.approx(max(causal_6, bitune_4,
                                                    min(causal_6, bitune_4) + causal_4))
    assert 'prediction: ' in out and 'otherwise idle' in out
    assert len(out.splitlines()) == 9  # nothing else: no parameter counts, no progress bars


def test_check_leaves_out_finished_runs_and_counts_runs_that_share_cores(tiny_plan, tmp_path,
                                                                         monkeypatch, capsys):
    opts, runs = tiny_plan
    monkeypatch.setattr(check, 'cores', lambda: 2)
    monkeypatch.setattr(check, 'finished', lambda r: r['cfg']['max_iters'] == 6)
    opts['jobs'] = 3  # 1 thread each, 2 runs left: 2 threads on 2 cores, no crowding
    info = check.check(opts, runs, seconds=0.1, max_steps=3, class_file=str(tmp_path / 'none'),
                       start_s=0.5)
    out = capsys.readouterr().out
    assert info['run_s'][1] == 0 and 'causal 6 it finished here already (reused)' in out
    assert info['predicted_s'] == pytest.approx(max(info['run_s']))
    assert 'no labs/class.json' in out and info['class'] is None
    monkeypatch.setattr(check, 'finished', lambda r: False)
    info = check.check(opts, runs, seconds=0.1, max_steps=3, class_file=str(tmp_path / 'none'),
                       start_s=0.5)
    out = capsys.readouterr().out  # 3 runs of 1 thread on 2 cores: each takes 1.5x as long
    assert info['threads'] == 1 and 'counted 1.5x as long' in out
    assert info['run_s'][0] == pytest.approx(1.5 * (0.5 + 4 * info['step_s']['causal']
                                                    + 3 * info['eval_s']['causal']))
    assert info['predicted_s'] == pytest.approx(max(info['run_s']))  # all three at once


def test_check_without_runs_says_what_to_do(tiny_plan):
    with pytest.raises(ValueError, match='no runs to time: name at least one'):
        check.check(tiny_plan[0], [])


def test_labs_py_check_runs_no_run_and_refuses_pool(tmp_path, monkeypatch):
    from labs import check as check_module, labs
    seen = []
    monkeypatch.setattr(check_module, 'check', lambda opts, runs: seen.append(runs) or {'ok': 1})
    monkeypatch.setattr(labs.runner, 'run_all', lambda *a: pytest.fail('--check starts no run'))
    assert labs.main(['--lab=methods', '--arms=causal,bitune', '--seeds=11', '--check',
                      f'--out_dir={tmp_path}']) == {'ok': 1}
    assert sorted({r['arm'] for r in seen[0]}) == ['bitune', 'causal'] and len(seen[0]) == 3
    assert not os.listdir(tmp_path)  # it writes nothing
    with pytest.raises(ValueError, match='--check=True: it times this machine'):
        labs.main(['--lab=methods', '--check', f'--pool={tmp_path}'])
