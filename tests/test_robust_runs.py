"""A full disk however a write fails, and every setting out of its range, end in one line that names
what was wrong; a Bitune sample at any temperature is a sample."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

import bench
import sample
import train
from helpers import ROOT
from utils import checkpoint, runtime

TINY = ['--method=causal', '--n_layer=1', '--n_head=1', '--n_embd=16', '--block_size=32',
        '--batch_size=4', '--eval_iters=1', '--eval_examples=4', '--toy_n_train=64',
        '--toy_n_val=8', '--toy_max_len=5', '--warmup_iters=1', '--max_iters=2',
        '--eval_interval=2', '--device=cpu']
# what torch's zip writer raises when the disk fills under it (no errno, no file name)
ZIP_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 601600 vs 601488"


def test_a_full_disk_inside_torchs_zip_writer_is_named_as_such(tmp_path, monkeypatch):
    def full(obj, f, **kw):
        f.write(b'part of a checkpoint')
        raise RuntimeError(ZIP_FULL)
    monkeypatch.setattr(checkpoint.torch, 'save', full)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(checkpoint.shutil, 'disk_usage', lambda p: usage._replace(free=4096))
    out = str(tmp_path / 'out')
    with pytest.raises(OSError) as e:
        train.main(TINY + [f'--out_dir={out}'])
    assert runtime.describe(e.value).startswith(f"the disk is full (writing {out}/ckpt.pt)")
    assert sorted(os.listdir(out)) == ['log.jsonl']  # no .tmp left to keep it full, no lock


def test_a_zip_writer_failure_with_room_on_the_disk_is_not_called_a_full_disk(tmp_path,
                                                                               monkeypatch):
    monkeypatch.setattr(checkpoint.torch, 'save', lambda *a, **k: (_ for _ in ()).throw(
        RuntimeError(ZIP_FULL)))
    with pytest.raises(RuntimeError, match='unexpected pos'):
        checkpoint.save_checkpoint(str(tmp_path / 'ckpt.pt'), {})


@pytest.mark.skipif(not sys.platform.startswith('linux') or os.geteuid() != 0,
                    reason='mounting a tiny tmpfs needs Linux and root')
def test_a_real_full_disk_while_writing_the_checkpoint(tmp_path):
    disk = tmp_path / 'disk'
    disk.mkdir()
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=32k', 'tmpfs', str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip('this machine refuses to mount a tmpfs')
    try:
        r = subprocess.run([sys.executable, 'train.py', *TINY, f'--out_dir={disk}/out'], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 1 and 'Traceback' not in r.stderr
        assert r.stderr.strip().splitlines()[-1].startswith(
            f"error: the disk is full (writing {disk}/out/ckpt.pt): free space on it")
        assert os.listdir(disk / 'out') == ['log.jsonl']  # the old state, nothing half written
    finally:
        subprocess.run(['umount', str(disk)])


@pytest.mark.parametrize('script, argv, message', [
    (train, ['--seed=2**70'], "config key 'seed'"),  # not a number: the type check names it
    (train, [f'--seed={2**70}'], r"seed=1180591620717411303424: must be in 0..2\*\*63-1"),
    (train, ['--toy_seed=-1'], r"toy_seed=-1: must be in 0..2\*\*63-1"),
    (train, ['--threads=1000000'], r"threads=1000000: must be in 0..\d+ \(the cores here"),
    (sample, [f'--seed={2**70}', '--ckpt=x.pt'], r"seed=.*: must be in 0..2\*\*63-1"),
    (sample, ['--num_samples=1000000000', '--ckpt=x.pt'],
     r"num_samples=1000000000: must be in 1..1000"),
    (sample, ['--threads=1000000', '--ckpt=x.pt'], "threads=1000000: must be in 0.."),
    (bench, ['--vocab_size=1'], "vocab_size=1: must be >= 2"),
    (bench, ['--quick=True', '--gen_tokens=0'], "gen_tokens='0': positive token counts"),
    (bench, ['--gen_tokens=0'], "gen_tokens='0': positive token counts"),
    (bench, ['--model=gpt2-shape', '--n_layer=1'],
     "n_layer=1: --model=gpt2-shape sets n_layer to 12"),
    (bench, ['--threads=1000000'], "threads=1000000: must be in 0.."),
], ids=lambda x: x if isinstance(x, str) else None)
def test_a_setting_out_of_its_range_is_named(tmp_path, script, argv, message):
    extra = TINY + [f'--out_dir={tmp_path}/out'] if script is train else []
    with pytest.raises(ValueError, match=message):
        script.main(extra + argv)


def test_a_config_file_that_exits_is_an_error_and_out_dir_braces_take_setting_names(tmp_path):
    config = tmp_path / 'exits.py'
    config.write_text('import sys\nsys.exit(0)\n')
    with pytest.raises(ValueError, match=r"exits.py' failed to run: SystemExit"):
        train.main([str(config)])
    with pytest.raises(ValueError, match='braces may only name settings'):
        train.main(TINY + ['--out_dir=out-{method.upper}'])
    with pytest.raises(ValueError, match='braces may only name settings'):
        train.main(TINY + ['--out_dir=out-{nope}'])


def test_a_tiny_temperature_samples_the_most_likely_token(tiny_gpt):
    model = tiny_gpt()
    logits = torch.randn(3, 23) * 5
    g = torch.Generator().manual_seed(0)
    tok = model._sample(logits, 1e-30, None, g)  # logits / 1e-30 would be inf, softmax NaN
    assert torch.equal(tok[:, 0], logits.argmax(-1))


def test_a_log_row_without_its_iteration_is_named_on_resume_and_a_half_row_is_dropped(tmp_path):
    out = str(tmp_path / 'out')
    train.main(TINY + [f'--out_dir={out}'])
    log = os.path.join(out, 'log.jsonl')
    good = open(log).read()
    with open(log, 'a') as f:
        f.write('{"val_loss": 1.0}\n')  # a row someone added by hand
    with pytest.raises(ValueError, match=r"log.jsonl, line 3, is not a row of train.py's log"):
        train.main(TINY + [f'--out_dir={out}', '--init_from=resume', '--max_iters=4'])
    with open(log, 'w') as f:
        f.write(good + '{"iter": 4, "val_lo')  # a run killed while writing a row
    last = train.main(TINY + [f'--out_dir={out}', '--init_from=resume', '--max_iters=4'])
    assert last['iter'] == 4 and open(log).read().count('\n') == 3  # rows 0, 2 and 4, whole


@pytest.mark.skipif(not hasattr(os, 'mkfifo'), reason='named pipes are a POSIX thing')
def test_a_pipe_where_a_file_is_read_is_named_never_opened(tmp_path):
    """Opening a named pipe blocks until someone writes: every file the scripts read is checked
    to be a regular file first (the config file, the dataset's files, sample.py's FILE:)."""
    os.mkfifo(tmp_path / 'config.py')
    with pytest.raises(ValueError, match=r"config.py' is not a regular file"):
        train.main([str(tmp_path / 'config.py')])
    data = tmp_path / 'data' / 'mine'
    data.mkdir(parents=True)
    (data / 'meta.json').write_text('{}')
    (data / 'val.jsonl').write_text('')
    os.mkfifo(data / 'train.jsonl')
    with pytest.raises(ValueError, match=r'train.jsonl is not a regular file; re-run'):
        train.main(TINY + ['--dataset=mine', f'--data_dir={tmp_path}/data',
                           f'--out_dir={tmp_path}/o'])
    from test_walkthrough import toy_checkpoint
    ckpt = toy_checkpoint(tmp_path / 'ckpt.pt', method='causal')
    os.mkfifo(tmp_path / 'prompt.txt')
    with pytest.raises(FileNotFoundError, match=r'prompt.txt: is not a regular file'):
        sample.main([f'--ckpt={ckpt}', f'--start=FILE:{tmp_path}/prompt.txt'])
