"""prepare.py is all or nothing: a preparation that fails or is stopped anywhere leaves the old
dataset (or none), never a mix of two preparations that train.py would train on."""
import os
import sys

import pytest

from data import tasks
from helpers import load_script, write_jsonl

RECORD = {'fname': 'a', 'dialogue': '#Person1#: Hi.\n#Person2#: Hello.', 'summary': 'A greeting.'}
TEST = {'fname': 'b', 'dialogue': '#Person1#: Bye.',
        'summary1': 'A.', 'summary2': 'B.', 'summary3': 'C.'}


@pytest.fixture
def prepared(tmp_path):
    """A dataset prepared from 4 raw records per split; returns (module, src, data_dir, what
    load_task read)."""
    src = tmp_path / 'raw'
    for split in ('train', 'dev'):
        write_jsonl(src / f'dialogsum.{split}.jsonl',
                    [{**RECORD, 'summary': f'Greeting {i}.'} for i in range(4)])
    write_jsonl(src / 'dialogsum.test.jsonl', [TEST] * 4)
    mod = load_script('dialogsum')
    mod.main(['--src', str(src), '--out_dir', str(tmp_path / 'dialogsum'),
              '--block_size', '64', '--max_answer', '8'])
    return mod, src, str(tmp_path), tasks.load_task('dialogsum', data_dir=str(tmp_path))


def prepare_again(mod, src, data_dir, *extra):
    return mod.main(['--src', str(src), '--out_dir', os.path.join(data_dir, 'dialogsum'),
                     '--block_size', '64', '--max_answer', '8', *extra])


@pytest.mark.parametrize('stop', [ValueError('the val split failed'), KeyboardInterrupt()],
                         ids=['failure', 'Ctrl-C'])
def test_a_re_preparation_stopped_midway_leaves_the_old_dataset(prepared, monkeypatch, stop):
    mod, src, data_dir, before = prepared
    prepare_common = sys.modules[mod.prepare.__module__]
    real = prepare_common.build_split

    def fails_at_val(records, split, *a):
        if split == 'val':
            raise stop
        return real(records, split, *a)
    monkeypatch.setattr(prepare_common, 'build_split', fails_at_val)
    with pytest.raises(type(stop)):
        # train.jsonl of 2 records was written by now
        prepare_again(mod, src, data_dir, '--limit', '2')
    assert tasks.load_task('dialogsum', data_dir=data_dir) == before
    # and no .prepare-tmp
    assert sorted(os.listdir(os.path.join(data_dir, 'dialogsum'))) == [
        'meta.json', 'test.jsonl', 'train.jsonl', 'val.jsonl']


def test_a_kill_between_two_renames_leaves_no_dataset_rather_than_a_mix(prepared, monkeypatch):
    mod, src, data_dir, _ = prepared
    prepare_common = sys.modules[mod.prepare.__module__]
    real, renames = os.replace, []

    def killed_after_the_first(a, b):
        renames.append(b)
        if len(renames) == 2:
            raise KeyboardInterrupt
        real(a, b)
    monkeypatch.setattr(prepare_common.os, 'replace', killed_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        prepare_again(mod, src, data_dir, '--limit', '2')
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError,
                       match="dataset 'dialogsum' is not prepared: missing .*meta.json"):
        tasks.load_task('dialogsum', data_dir=data_dir)
    assert not os.path.exists(os.path.join(data_dir, 'dialogsum', '.prepare-tmp'))
    prepare_again(mod, src, data_dir, '--limit', '2')  # run again: the new dataset, whole
    assert len(tasks.load_task('dialogsum', data_dir=data_dir)['train']) == 2


def test_splits_of_two_preparations_are_refused(prepared, tmp_path):
    mod, src, data_dir, _ = prepared
    folder = os.path.join(data_dir, 'dialogsum')
    old_meta = open(os.path.join(folder, 'meta.json')).read()
    prepare_again(mod, src, data_dir, '--limit', '2')
    with open(os.path.join(folder, 'meta.json'), 'w') as f:  # the old meta.json with the new splits
        f.write(old_meta)
    with pytest.raises(ValueError, match=r"train.jsonl is not the file .*meta.json describes "
                                         r".*re-run data/dialogsum"):
        tasks.load_task('dialogsum', data_dir=data_dir)
