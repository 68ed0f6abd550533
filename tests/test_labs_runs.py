"""labs.py keeps a lab whole: Ctrl-C and SIGTERM stop every run and start no other, a killed labs.py
leaves no run behind, one labs.py per out_dir, a run is reused only with the same settings and code,
and every option of its own is checked."""
import ast
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from utils.runtime import run_main
from labs import labs, runner, shares
from utils import lock
from utils.rundir import read_log
from test_labs import TINY, tiny_lab, train_here  # noqa: F401 (fixtures)

ROOT = labs.ROOT
# the real one: the train_here fixture replaces subprocess.Popen for labs.py's runs
POPEN = subprocess.Popen
# one arm of the methods lab on a tiny model: causal at 4 steps and at equal compute (BAI + Bitune's
# budget)
LAB = ['--lab=methods', '--arms=causal', '--seeds=1', '--max_iters=4', '--evals=2', *TINY]


def numbers(res):
    """results.json without what differs between two runs of the same lab: timings and the reused
    count."""
    if isinstance(res, dict):
        return {k: numbers(v) for k, v in res.items() if k not in ('elapsed_s', 'wall_s', 'reused')}
    return [numbers(v) for v in res] if isinstance(res, list) else res


def start_lab(out_dir):
    """labs.py as a person starts it; returns it and the pid of its first train.py."""
    proc = POPEN([sys.executable, 'labs/labs.py', *LAB, f'--out_dir={out_dir}'], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        kids = ''.join(open(f'/proc/{proc.pid}/task/{t}/children').read()
                       for t in os.listdir(f'/proc/{proc.pid}/task'))
        if kids.split():
            return proc, int(kids.split()[0])
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"labs.py started no run: {proc.communicate()[0][-2000:]}")


def gone(pid, within=5.0):
    """Whether process pid ends within `within` seconds (a zombie has ended)."""
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            with open(f'/proc/{pid}/stat') as f:
                if f.read().rsplit(')', 1)[1].split()[0] == 'Z':
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


needs_proc = pytest.mark.skipif(not os.path.isdir('/proc/self/task'),
                                reason='reads children from /proc (Linux)')


@needs_proc
def test_ctrl_c_stops_every_run_and_the_same_command_continues_to_the_same_numbers(tmp_path,
                                                                                   train_here):
    whole, cut = tmp_path / 'whole', tmp_path / 'cut'
    labs.main([*LAB, f'--out_dir={whole}'])  # the lab uninterrupted, for comparison
    proc, child = start_lab(cut)
    t0 = time.time()
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=30)[0]
    assert time.time() - t0 < 10 and proc.returncode == 130
    assert gone(child), 'a train.py outlived Ctrl-C'
    line = out.strip().splitlines()[-1]
    assert line.startswith('stopped: 0 of 2 runs are finished')
    assert '1 were stopped, 0 failed and 1 not started' in line
    assert line.endswith(f"run the same command: python labs/labs.py {' '.join(LAB)} "
                         f"--out_dir={cut}")
    assert not (cut / 'lock').exists() and not (cut / 'causal' / 's1' / 'run.json').exists()
    # the run not started (the longest starts first) as if killed after its first evaluation: a log
    # that stops early, no run.json
    first = (whole / 'causal' / 's1' / 'log.jsonl').read_text().splitlines()[0]
    (cut / 'causal' / 's1').mkdir(parents=True, exist_ok=True)
    (cut / 'causal' / 's1' / 'log.jsonl').write_text(first + '\n')
    runs = labs.main([*LAB, f'--out_dir={cut}'])
    # both runs of each lab: none counted as finished after the stop
    assert len(train_here.commands) == 4
    assert numbers(json.loads((cut / 'results.json').read_text())) == \
        numbers(json.loads((whole / 'results.json').read_text()))
    for r in runs:  # a run started over writes its log afresh: one row per evaluation
        iters = [row['iter'] for row in read_log(r['out_dir'])]
        assert iters == sorted(set(iters)) and iters[-1] == r['cfg']['max_iters']


@needs_proc
def test_a_killed_labs_py_leaves_no_run_and_its_lock_is_taken_over(tmp_path):
    proc, child = start_lab(tmp_path)
    proc.kill()  # SIGKILL: labs.py runs nothing more; the kernel must end its run
    proc.communicate(timeout=30)
    assert gone(child), 'a train.py outlived a killed labs.py'
    assert json.loads((tmp_path / 'lock').read_text())['pid'] == proc.pid  # left, its owner dead
    path = lock.take(str(tmp_path), 'labs.py')
    assert json.loads(open(path).read())['pid'] == os.getpid()
    lock.release(path)
    assert not os.path.exists(path)


def test_a_second_labs_py_on_the_same_out_dir_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, 'launch', lambda *a: pytest.fail('no run should start'))
    owner = json.dumps({'pid': os.getppid(), 'host': socket.gethostname(), 'what': 'labs.py',
                        'since': 'noon'})
    (tmp_path / 'lock').write_text(owner)  # a live process holds it
    with pytest.raises(ValueError, match=f'in use by labs.py \\(pid {os.getppid()}, since noon\\)'):
        labs.main([*LAB, f'--out_dir={tmp_path}'])
    assert (tmp_path / 'lock').read_text() == owner  # not ours to remove


def fake_train(argv):
    """train.py in a hurry: the log rows a run of these settings writes, with made-up scores."""
    import train
    from configurator import configure
    cfg = configure(train.DEFAULTS, argv)
    os.makedirs(cfg['out_dir'], exist_ok=True)
    with open(os.path.join(cfg['out_dir'], 'log.jsonl'), 'w') as f:
        for it in (0, cfg['max_iters']):
            row = {'iter': it, 'exact_match': float(it + cfg['seed']), 'elapsed_s': 1.0}
            f.write(json.dumps(row) + '\n')


def test_runs_are_reused_only_with_the_same_settings_and_code(tiny_lab, tmp_path, train_here,
                                                              monkeypatch, capsys):
    monkeypatch.setattr(train_here, 'train', fake_train)
    config = tmp_path / 'mine.py'
    config.write_text('learning_rate = 0.002\n')
    argv = [f'--lab={tiny_lab}', str(config), '--seeds=1', '--max_iters=2',
            f'--out_dir={tmp_path / "lab"}', *TINY]

    def again():
        """Run the lab; how many runs it started, and its reused count."""
        before = len(train_here.commands)
        labs.main(argv)
        res = json.loads((tmp_path / 'lab' / 'results.json').read_text())
        return len(train_here.commands) - before, res['reused'], res['runs']
    assert again() == (3, 0, 3)
    assert again() == (0, 3, 3)
    assert '3 of 3 runs reused from earlier (same settings and code)' in capsys.readouterr().out
    runs = labs.plan(*labs.read_options(argv))
    log = os.path.join(runs[0]['out_dir'], 'log.jsonl')
    with open(log) as f:
        first = f.readline()
    with open(log, 'w') as f:  # stopped before its end
        f.write(first)
    assert again() == (1, 2, 3)
    config.write_text('learning_rate = 0.003\n')  # the same file, another setting inside it
    assert again() == (3, 0, 3)
    monkeypatch.setattr(shares, 'code_hash', lambda: 'edited')
    assert again() == (3, 0, 3)


def test_a_fingerprint_holds_the_settings_values_not_where_they_come_from(tiny_lab, tmp_path):
    config = tmp_path / 'mine.py'
    config.write_text('learning_rate = 0.002\n')

    def prints(*argv):
        opts, rest = labs.read_options([f'--lab={tiny_lab}', '--seeds=1', *argv])
        return [r['fingerprint'] for r in labs.plan(opts, rest)]
    here = prints(str(config), f'--out_dir={tmp_path / "a"}')
    assert here == prints('--learning_rate=0.002', f'--out_dir={tmp_path / "b"}')
    assert here != prints(f'--out_dir={tmp_path / "a"}')
    assert 'out_dir' not in here[0]['settings'] and here[0]['settings']['learning_rate'] == 0.002
    assert len(here[0]['code']) == 64
    # every file of this project that train.py imports (at the top or inside a function), but the
    # plots and the folder's lock
    seen = set()

    def imports(path):
        for node in ast.walk(ast.parse(open(os.path.join(ROOT, path)).read())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module, *(f'{node.module}.{a.name}' for a in node.names)] \
                if isinstance(node, ast.ImportFrom) else []
            for name in names:
                f = os.path.join(*name.split('.')) + '.py'
                if os.path.exists(os.path.join(ROOT, f)) and f not in seen:
                    seen.add(f)
                    imports(f)
    imports('train.py')
    assert seen - {'utils/plot.py', 'utils/lock.py'} | {'train.py'} == set(shares.CODE)


@pytest.mark.parametrize('arg', [
    '--quick=yes', '--seeds=', '--jobs=', '--lab=', '--out_dir=', '--max_iters=abc',
    '--max_iters=0', '--jobs=0', '--jobs=two', '--evals=0', '--seeds=1,x', '--seeds=1,1',
    '--seeds=-1', '--target=abc', '--target=200', '--arms=nope', '--arms=bitune', '--baseline=nope',
    '--pool=/no/such/folder', '--watch', '--watch=maybe',
])
def test_each_bad_option_gets_one_error_line_naming_it_with_a_good_example(arg, monkeypatch,
                                                                           capsys):
    monkeypatch.setattr(labs, 'plan', lambda *a: pytest.fail('no plan for bad options'))
    argv = [arg] if arg.startswith('--lab=') else ['--lab=methods', arg]
    with pytest.raises(SystemExit) as e:
        run_main(lambda: labs.main(argv))
    err = capsys.readouterr().err
    key = arg[2:].split('=')[0]
    assert e.value.code == 1 and err.count('\n') == 1 and err.startswith(f'error: --{key}=')
    assert f'e.g. --{key}=' in err
    if key == 'arms':  # names the lab's arms, or the baseline they lack
        assert 'causal, bitune, bai, bitune_bai' in err or \
            "the baseline 'causal' must be among them" in err


@pytest.mark.parametrize('flag, quick', [('--quick', True), ('--quick=True', True),
                                         ('--quick=1', True), ('--quick=false', False),
                                         ('--quick=0', False)])
def test_quick_takes_a_bare_flag_or_true_false(flag, quick):
    assert labs.read_options(['--lab=methods', flag])[0]['quick'] is quick


def test_arms_are_named_as_their_folders_where_their_names_hold_commas():
    opts, _ = labs.read_options(['--lab=mixing', '--arms=fixed_alpha_0.5,learned_theta_init_0.01'])
    assert opts['arms'] == ['fixed alpha 0.5', 'learned, theta_init 0.01']
    with pytest.raises(ValueError,
                       match='learned_theta_init_0.01, fixed_alpha_0.5, learned_theta_init_0.1'):
        labs.read_options(['--lab=mixing', '--arms=learned, theta_init 0.01'])
