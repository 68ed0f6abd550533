"""What a class hands in is untrusted: a teacher pools files from twenty people, copied, zipped,
downloaded, edited. Every share_*.json and run folder is read by one reader per format
(labs/handin.py, labs/runner.py) that checks what pooling needs; a file that fails is one line
naming the file, the place in it (run, row, key) and what to do, never a traceback, a hang or a
number pooled silently. What is neither a share nor a run folder is ignored, and said."""
import json
import os
import shutil
import signal

import pytest

from labs import handin
from test_labs_pool import fake_lab, hand_in, pool
from utils.runtime import run_main


@pytest.fixture(scope='module')
def made(tmp_path_factory):
    """A student's lab folder of seeds 1 and 2 (fake training): run folders and two shares."""
    out = tmp_path_factory.mktemp('made')
    fake_lab('--seeds=1,2', f'--out_dir={out}')
    return out


def refused(folder, capsys):
    """The teacher's pool of folder as a person sees it: one line, `error: ...`; its text."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main(lambda: pool(folder))
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count('\n') == 1 and err.startswith('error: '), err
    assert 'looks like a bug' not in err
    return err[len('error: '):-1]


def handed(made, tmp_path, edit=None, text=None):
    """Both shares handed in, the first as edit(share) leaves it, or as the bytes `text`."""
    folder = hand_in(tmp_path / 'class', made / 'share_s1.json', made / 'share_s2.json')
    path = folder / 'student0' / 'share_s1.json'
    if edit:
        share = json.loads(path.read_text())
        edit(share)
        path.write_text(json.dumps(share))
    if text is not None:
        path.write_bytes(text(path.read_bytes()))
    return folder, path


FIX = "ask its author for the share as labs.py wrote it, or take it out of the folder"


@pytest.mark.parametrize('text, says', [
    (lambda b: b[:len(b) // 2], 'is not JSON (cut short): '),
    (lambda b: b'', 'is empty'),
    (lambda b: b'   \n', 'is empty'),
    (lambda b: b'share of seed 1', 'is not JSON: Expecting value (line 1, column 1)'),
    (lambda b: b'\xff\xfe{\x00"\x00', 'is not text (not UTF-8)'),
    (lambda b: b'[1, 2]', "is a JSON list, not a share (an object with 'lab' and 'runs')"),
    (lambda b: b'[' * 100_000 + b']' * 100_000, 'is nested too deep to be a file labs.py wrote'),
], ids=['truncated', 'empty', 'blank', 'not-json', 'not-utf8', 'a-list', 'nested-100000-deep'])
def test_a_share_that_is_not_a_json_object_is_refused_in_one_line(made, tmp_path, capsys, text,
                                                                  says):
    folder, path = handed(made, tmp_path, text=text)
    line = refused(folder, capsys)
    assert line.startswith(f"{path} {says}") and line.endswith(f"; {FIX}")


def delete(*keys):
    def edit(share):
        target = share
        for k in keys[:-1]:
            target = target[k]
        del target[keys[-1]]
    return edit


def put(value, *keys):
    def edit(share):
        target = share
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value
    return edit


# the second run of share_s1.json: causal at equal compute, 3 iterations; row 1 its last
RUN = "run 2 ('causal', compute)"


@pytest.mark.parametrize('edit, says', [
    (delete('lab'), " has no 'lab', so it is not a share"),
    (delete('runs'), " has no 'runs', so it is not a share"),
    (put({}, 'runs'), ": 'runs' is {}, not a list of runs"),
    (put(7, 'lab'), ": 'lab' is 7, not a lab name"),
    (put([], 'runs'), ' holds no runs'),
    (put('causal', 'runs', 1), ", run 2 is not a run's record (a JSON str, not an object)"),
    (delete('runs', 1, 'fingerprint'), ", run 2 has no 'fingerprint'"),
    (put('1', 'runs', 1, 'seed'), ", run 2: 'seed' is '1', not a whole number >= 0"),
    (put(['steps', 'steps'], 'runs', 1, 'views'),
     ", run 2: 'views' is ['steps', 'steps'], not a list of 'steps' and/or 'compute'"),
    (put([['steps']], 'runs', 1, 'views'),
     ", run 2: 'views' is [['steps']], not a list of 'steps' and/or 'compute'"),
    (delete('runs', 1, 'rows'), f", {RUN} has no 'rows'"),
    (put('abc', 'runs', 1, 'rows'), f", {RUN}: 'rows' is 'abc', not its log's rows"),
    (put([], 'runs', 1, 'rows'), f", {RUN}: 'rows' is [], not its log's rows"),
    (delete('runs', 1, 'rows', 1, 'elapsed_s'), f", {RUN}, row 1 has no 'elapsed_s'"),
    (delete('runs', 1, 'rows', 1, 'exact_match'), f", {RUN}, row 1 has no 'exact_match'"),
    (put(float('nan'), 'runs', 1, 'rows', 1, 'exact_match'),
     f", {RUN}, row 1: 'exact_match' is nan, not a score from 0 to 100"),
    (put(float('inf'), 'runs', 1, 'rows', 1, 'exact_match'),
     f", {RUN}, row 1: 'exact_match' is inf, not a score from 0 to 100"),
    (put('50.0', 'runs', 1, 'rows', 1, 'exact_match'),
     f", {RUN}, row 1: 'exact_match' is '50.0', not a score from 0 to 100"),
    (put(250, 'runs', 1, 'rows', 1, 'exact_match'),
     f", {RUN}, row 1: 'exact_match' is 250, not a score from 0 to 100"),
    (put(-1.0, 'runs', 1, 'rows', 0, 'em_C'),
     f", {RUN}, row 0: 'em_C' is -1.0, not a score from 0 to 100"),
    (put(True, 'runs', 1, 'rows', 1, 'rougeL'),
     f", {RUN}, row 1: 'rougeL' is True, not a score from 0 to 100"),
    (lambda s: s['runs'][1]['rows'].pop(), f", {RUN}: its rows stop at iteration 0, before its "
                                           f"last (3): the run did not finish"),
    (put(3, 'runs', 1, 'rows', 0, 'iter'),
     f", {RUN}, row 1: 'iter' is 3, not an iteration after the row before's (3)"),
    (put('nope', 'runs', 1, 'arm'),
     ", run 2: arm 'nope' is not one of this lab's (causal, bitune)"),
    (lambda s: s['runs'].append(s['runs'][0]),
     ": runs 1 and 4 are both its 'causal' run (steps), which a share holds once"),
    (put('fast', 'runs', 1, 'setup'), f", {RUN}: 'setup' is 'fast', not what train.py records"),
], ids=['no-lab', 'no-runs', 'runs-a-dict', 'lab-a-number', 'runs-empty', 'run-a-string',
        'no-fingerprint', 'seed-a-string', 'views-twice', 'views-nested', 'no-rows',
        'rows-a-string', 'rows-empty',
        'no-elapsed_s', 'no-metric', 'score-nan', 'score-infinity', 'score-a-string',
        'score-250', 'score-negative', 'score-a-bool', 'stops-early', 'rows-out-of-order',
        'unknown-arm', 'a-run-twice', 'setup-a-string'])
def test_a_share_without_what_pooling_needs_is_refused_naming_the_place(made, tmp_path, capsys,
                                                                         edit, says):
    folder, path = handed(made, tmp_path, edit=edit)
    assert refused(folder, capsys) == f"{path}{says}; {FIX}"


def test_nan_and_infinity_as_json_writes_them_are_refused_too(made, tmp_path, capsys):
    for bad in (b'NaN', b'Infinity', b'-Infinity', b'1e999'):
        folder, path = handed(made, tmp_path, text=lambda b: b.replace(b'"exact_match": 43.0',
                                                                       b'"exact_match": ' + bad))
        assert "row 1: 'exact_match' is " in refused(folder, capsys)


def test_a_share_of_another_lab_says_which_lab_to_pool_it_with(made, tmp_path, capsys):
    folder, path = handed(made, tmp_path, edit=put('methods', 'lab'))
    assert refused(folder, capsys) == f"{path} is a share of lab 'methods', not 'tiny'; pool it " \
                                      f"with --lab=methods"


def test_a_broken_link_or_a_fifo_named_like_a_share_is_refused_without_hanging(made, tmp_path,
                                                                               capsys):
    folder, path = handed(made, tmp_path)
    path.unlink()
    path.symlink_to(tmp_path / 'gone.json')
    assert refused(folder, capsys) == f"{path} is a link to a file that is not there; {FIX}"
    path.unlink()
    os.mkfifo(path)  # opening it would wait for a writer, forever
    signal.alarm(20)  # a hang fails the test rather than the suite
    try:
        assert refused(folder, capsys) == f"{path} is not a regular file; {FIX}"
    finally:
        signal.alarm(0)


def test_a_lab_folder_handed_in_whole_is_checked_run_by_run(made, tmp_path, capsys):
    lab = tmp_path / 'class' / 'lab'
    shutil.copytree(made, lab, ignore=shutil.ignore_patterns('share_s*', 'results*'))
    assert pool(tmp_path / 'class')['seeds'] == [1, 2]  # as it is: pooled
    record = lab / 'causal' / 's2_equal_compute' / 'run.json'
    record.write_text(record.read_text()[:40])
    fix = ("delete that run's folder (the same lab command runs it again), or pool the lab's "
           "share_s<seed>.json instead")
    line = refused(tmp_path / 'class', capsys)
    assert line.startswith(f"{record} is not JSON (cut short): ") and line.endswith(f"; {fix}")
    shutil.copy(made / 'causal' / 's2_equal_compute' / 'run.json', record)
    (lab / 'bitune' / 's1' / 'log.jsonl').unlink()
    assert refused(tmp_path / 'class', capsys) == \
        f"{lab / 'bitune' / 's1'} has a run.json but no log.jsonl (a regular file: the run's " \
        f"rows); {fix}"


def test_shares_in_linked_folders_are_found_and_a_link_that_loops_is_read_once(made, tmp_path,
                                                                               capsys):
    elsewhere = hand_in(tmp_path / 'elsewhere', made / 'share_s1.json', made / 'share_s2.json')
    folder = tmp_path / 'class'
    folder.mkdir()
    (folder / 'alice').symlink_to(elsewhere / 'student0')  # e.g. a synced folder
    (folder / 'bob').symlink_to(elsewhere / 'student1')
    (folder / 'bob_again').symlink_to(elsewhere / 'student1')
    (elsewhere / 'student1' / 'up').symlink_to(folder)  # a loop
    capsys.readouterr()
    assert pool(folder)['seeds'] == [1, 2]
    out = capsys.readouterr().out
    assert f"ignored {folder / 'bob' / 'up'}: a link to {folder}, read already" in out
    assert f"ignored {folder / 'bob_again'}: a link to {elsewhere / 'student1'}, read already" \
        in out


def test_other_files_are_ignored_and_counted_a_look_alike_gets_a_line(made, tmp_path, capsys):
    folder = hand_in(tmp_path / 'class', made / 'share_s1.json', made / 'share_s2.json')
    (folder / 'README.txt').write_text('shares of group B')
    (folder / '__MACOSX' / 'student0').mkdir(parents=True)
    (folder / '__MACOSX' / 'student0' / '._share_s1.json').write_bytes(b'\x00\x05\x16\x07')
    (folder / 'student1' / 'train.txt').write_text('a log')
    shutil.copy(made / 'share_s1.json', folder / 'student0' / 'share_s1.json.bak')
    capsys.readouterr()
    assert pool(folder)['seeds'] == [1, 2]
    out = capsys.readouterr().out.splitlines()
    assert f"ignored {folder / 'student0' / 'share_s1.json.bak'}: named like a share, but a " \
           f"share is share_s<seed>.json" in out
    assert f"ignored 3 other file(s) in {folder} (not share_*.json nor a run folder)" in out
    # a pool in the same folder again: its own results are not counted
    pool(folder)
    assert f"ignored 3 other file(s) in {folder} (not share_*.json nor a run folder)" in \
        capsys.readouterr().out.splitlines()
    # a .json named share_* is read as a share: one that is not is an error, not ignored
    (folder / 'student1' / 'share_s2 (1).json').write_text('{"lab": "tiny", "runs": [')
    assert refused(folder, capsys).startswith(
        f"{folder / 'student1' / 'share_s2 (1).json'} is not JSON (cut short)")


def test_a_folder_with_nothing_to_pool_says_so(tmp_path, capsys):
    (tmp_path / 'notes.txt').write_text('nothing yet')
    assert refused(tmp_path, capsys) == \
        f"--pool={tmp_path}: no share_*.json and no finished run folder in it (nor in the " \
        f"folders in it); put the shares handed in there"


def test_describe_names_a_setup_in_words():
    assert handin.describe(None) == handin.describe({}) == 'not recorded'
    assert handin.describe({'device': 'cuda:1', 'dtype': 'float32', 'threads': 8}) == \
        'cuda:1, float32, 8 threads'


def test_a_copy_of_a_published_share_is_refused_and_pools_where_it_is_published(made, tmp_path,
                                                                                monkeypatch,
                                                                                capsys):
    """Our published class's shares (labs/results/*/shares/) are for comparison: a student who
    hands in a copy of one is told so; the published folder itself still pools."""
    from labs import handin
    results = tmp_path / 'results'
    shutil.copytree(made, results / 'tiny_class' / 'shares', ignore=shutil.ignore_patterns('lock'))
    monkeypatch.setattr(handin, 'PUBLISHED', str(results))
    folder, _ = handed(made, tmp_path)
    assert 'is a copy of our published share of seed 1' in refused(folder, capsys)
    assert pool(results / 'tiny_class' / 'shares')['seeds'] == [1, 2]
