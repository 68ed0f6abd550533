"""
Bad input, tried the way a user would: each row of the table either fails with a clean error
(the exception train.py/sample.py/... turn into one `error:` line, with a message that says what
was wrong) or does the right thing. A few rows run the real scripts in a subprocess and check
that the user sees one line and exit status 1. Then the regression tests for inputs that once
gave a silently wrong result: Bitune that cannot reach K/V, a negative temperature, a non-finite
checkpoint, GPT-2 on another vocabulary, adapters on another base, a fresh run over an old one,
and log rows repeated after a kill.
"""
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
import torch

import bench
from utils import runtime
import sample
import train
from bitune import VARIANTS, Bitune, check_bidir_reaches_kv
from data import tasks
from data.toy import toy
from helpers import ROOT, load_script, randomize_adapters, write_jsonl, write_safetensors
from labs import runner
from adapters import add_adapters
from model import GPT, GPTConfig
from utils import checkpoint, plot, weights

TINY = ['--method=causal', '--n_layer=1', '--n_head=2', '--n_embd=16', '--block_size=32',
        '--batch_size=8', '--eval_iters=1', '--eval_examples=4', '--toy_n_train=64',
        '--toy_n_val=8', '--toy_max_len=5', '--warmup_iters=1', '--max_iters=2',
        '--eval_interval=2', '--device=cpu']


def fresh(e):
    """A new, not yet existing out_dir under the module's folder."""
    e.n += 1
    return str(e.tmp / f'run{e.n}')


def run_train(e, *args, out=None):
    return train.main(TINY + [f'--out_dir={out or fresh(e)}', *args])


def read_log(out):
    with open(os.path.join(out, 'log.jsonl')) as f:
        return [json.loads(line) for line in f]


def copy_ckpt(src, dst, **config):
    """src's checkpoint with some settings of its config replaced, saved as dst."""
    ckpt = torch.load(src, weights_only=True)
    ckpt['config'].update(config)
    torch.save(ckpt, dst)
    return str(dst)


@pytest.fixture(scope='module')
def e(tmp_path_factory):
    """Everything the rows need, made once: finished runs, a GPT-2 stand-in, a prepared dataset
    and broken copies."""
    tmp = tmp_path_factory.mktemp('bad')
    e = SimpleNamespace(tmp=tmp, n=0)
    e.run = fresh(e)
    run_train(e, out=e.run)
    e.base, e.base2 = str(tmp / 'base'), str(tmp / 'base2')
    run_train(e, out=e.base)
    run_train(e, '--seed=7', out=e.base2)  # same shapes, other weights
    e.lora = str(tmp / 'lora')
    run_train(e, '--peft=lora', f'--init_from={e.base}/ckpt.pt', out=e.lora)
    # GPT-2's file layout (config.json + model.safetensors), with a tiny random model
    e.gpt2 = tmp / 'gpt2'
    e.gpt2.mkdir()
    gpt = GPT(GPTConfig(block_size=32, vocab_size=50257, n_layer=1, n_head=2, n_embd=8))
    write_safetensors(str(e.gpt2 / 'model.safetensors'),
                      {k: (v.t() if k.endswith(weights.CONV1D) else v)
                       for k, v in gpt.state_dict().items()
                       if k != 'lm_head.weight'})
    (e.gpt2 / 'config.json').write_text(json.dumps({'n_layer': 1, 'n_head': 2, 'n_embd': 8,
                                                    'vocab_size': 50257, 'n_positions': 32}))
    # a prepared dataset, the way load_task reads one (char tokens: no tokenizer files needed)
    e.data = tmp / 'data'
    task = toy.make_toy_task(n_train=40, n_val=8, max_len=5)
    write_jsonl(e.data / 'mini' / 'train.jsonl', task['train'])
    write_jsonl(e.data / 'mini' / 'val.jsonl', task['val'])
    (e.data / 'mini' / 'meta.json').write_text(json.dumps({**task['meta'], 'name': 'mini'}))
    # config files
    (tmp / 'syntax.py').write_text("max_iters = = 3\n")
    (tmp / 'name.py').write_text("max_iters = undefined\n")
    (tmp / 'folder.py').mkdir()
    (tmp / 'afile').write_text("x")
    (tmp / 'empty').mkdir()
    torch.save(torch.zeros(3), tmp / 'tensor.pt')
    (tmp / 'text.pt').write_text("not a checkpoint")
    return e


def broken_dataset(e, edit):
    """A copy of the mini dataset with one file edited; returns the settings that train on it."""
    e.n += 1
    name = f'mini{e.n}'
    shutil.copytree(e.data / 'mini', e.data / name)
    edit(e.data / name)
    return [f'--dataset={name}', f'--data_dir={e.data}']


def edit_rows(path, fn):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    fn(rows)
    path.write_text(''.join(json.dumps(r) + '\n' for r in rows))


def broken_gpt2(e, file, text):
    e.n += 1
    d = e.tmp / f'gpt2_{e.n}'
    shutil.copytree(e.gpt2, d)
    (d / file).write_bytes(text)
    return str(d)


def safetensors_without_fields(e):
    header = json.dumps({'transformer.wte.weight': {'shape': [2, 2]}}).encode()
    return broken_gpt2(e, 'model.safetensors',
                       len(header).to_bytes(8, 'little') + header + bytes(16))


def dead_network(*a, **k):
    raise urllib.error.URLError('no network here')


def offline_gpt2(e, monkeypatch):
    monkeypatch.setenv('NANOBIDIR_CACHE', str(e.tmp / 'empty_cache'))
    # never download in a test, online or not
    monkeypatch.setattr(urllib.request, 'urlopen', dead_network)
    return sample.main(['--init_from=gpt2'])


def prepare(e, *argv):
    return load_script('dialogsum').main(list(argv))


def raw_dialogsum(e, records):
    e.n += 1
    src = e.tmp / f'raw{e.n}'
    for split in ('train', 'dev', 'test'):
        write_jsonl(src / f'dialogsum.{split}.jsonl', records)
    return str(src)


def prepare_scitldr(e, record):
    """scitldr's prepare.py on raw files whose second record is `record`."""
    e.n += 1
    src = e.tmp / f'raw{e.n}'
    for split in ('train', 'dev', 'test'):
        write_jsonl(src / f'{split}.jsonl', [{'source': ['One.'], 'target': ['x']}, record])
    return load_script('scitldr').main(['--src', str(src), '--out_dir', fresh(e)])


def truncated_raw(e):
    src = raw_dialogsum(e, [{'fname': 'a', 'dialogue': '#Person1#: Hi.',
                             'summary': 'A greeting.'}] * 3)
    with open(os.path.join(src, 'dialogsum.train.jsonl'), 'a') as f:
        f.write('{"fname": "b", "dia')
    return src


def sample_main(e, *argv):
    return sample.main([f'--ckpt={e.run}/ckpt.pt', *argv])


def no_ckpt(e):
    """A run killed while it wrote its first checkpoint: its first log row, a .tmp, no ckpt.pt."""
    out = shutil.copytree(e.run, fresh(e))
    os.replace(os.path.join(out, 'ckpt.pt'), os.path.join(out, 'ckpt.pt.tmp'))
    return out


def moved_run_resumes(e, monkeypatch):
    """A finished run copied elsewhere and named by a relative path resumes, and logs on from
    where it was."""
    monkeypatch.chdir(e.tmp)
    shutil.copytree(e.run, e.tmp / 'moved')
    run_train(e, '--init_from=resume', '--max_iters=4', out='moved')
    assert [r['iter'] for r in read_log(e.tmp / 'moved')] == [0, 2, 4]


# (name, what the user does, the exception, a substring of its message); `None` = it must work
ROWS = [
    # configuration
    ('n_embd not a multiple of n_head', lambda e, m: run_train(e, '--n_embd=30', '--n_head=4'),
     ValueError, 'must be a multiple of n_head'),
    ("BAI's default pivots on a 1-block model",
     lambda e, m: run_train(e, '--method=bai', '--n_layer=1'),
     ValueError, r'bai_layer=-2 needs a block that a 1-block model lacks.*--bai_layer=-1'),
    ('config file with a syntax error', lambda e, m: run_train(e, str(e.tmp / 'syntax.py')),
     ValueError, 'failed to run: SyntaxError'),
    ('config file that raises', lambda e, m: run_train(e, str(e.tmp / 'name.py')),
     ValueError, 'NameError'),
    ('config file that is a folder', lambda e, m: run_train(e, str(e.tmp / 'folder.py')),
     ValueError, 'is a directory'),
    ('None for a number', lambda e, m: run_train(e, '--lora_r=None'),
     ValueError, "'lora_r'.* must be int"),
    ('infinite learning rate', lambda e, m: run_train(e, '--learning_rate=1e999'),
     ValueError, 'finite number'),
    ('negative learning rate', lambda e, m: run_train(e, '--learning_rate=-0.1'),
     ValueError, 'must be > 0'),
    ('no val examples scored', lambda e, m: run_train(e, '--eval_examples=0'),
     ValueError, 'eval_examples=0'),
    ('no toy training examples', lambda e, m: run_train(e, '--toy_n_train=0'),
     ValueError, 'toy_n_train=0'),
    ('dropout above 1', lambda e, m: run_train(e, '--dropout=1.5'),
     ValueError, r'dropout=1.5: must be in \[0, 1\)'),
    ('negative warm-up', lambda e, m: run_train(e, '--warmup_iters=-1'),
     ValueError, 'must be >= 0'),
    ('unknown LoRA target', lambda e, m: run_train(e, '--peft=lora', '--lora_targets=c_attn,qkv'),
     ValueError, 'subset of c_attn,c_proj,c_fc'),
    ('unknown device', lambda e, m: run_train(e, '--device=gpu'), ValueError, "use 'auto', 'cpu'"),
    ('a CUDA index that does not exist', lambda e, m: run_train(e, '--device=cuda:99'),
     ValueError, 'cuda'),
    ('out_dir is a file', lambda e, m: run_train(e, out=str(e.tmp / 'afile')),
     ValueError, 'is a file'),
    ('out_dir is empty', lambda e, m: train.main(TINY + ['--out_dir=']),
     ValueError, 'out_dir is empty'),
    # data
    ('dataset never prepared', lambda e, m: run_train(e, '--dataset=nope', f'--data_dir={e.data}'),
     FileNotFoundError, 'python data/nope/prepare.py'),
    ('meta.json cut short', lambda e, m: run_train(e, *broken_dataset(
        e, lambda d: (d / 'meta.json').write_text('{"name": "mi'))),
     ValueError, 'meta.json is damaged'),
    ('train.jsonl cut short', lambda e, m: run_train(e, *broken_dataset(
        e, lambda d: (d / 'train.jsonl').write_text((d / 'train.jsonl').read_text()[:-20]))),
     ValueError, 'train.jsonl line 40 is damaged'),
    ('empty train.jsonl', lambda e, m: run_train(e, *broken_dataset(
        e, lambda d: (d / 'train.jsonl').write_text(''))),
     ValueError, 'train.jsonl holds no examples'),
    ('empty val.jsonl', lambda e, m: run_train(e, *broken_dataset(
        e, lambda d: (d / 'val.jsonl').write_text(''))),
     ValueError, 'val.jsonl holds no examples'),
    ('token id outside the vocabulary', lambda e, m: run_train(e, *broken_dataset(
        e, lambda d: edit_rows(d / 'train.jsonl',
                               lambda rows: rows[3]['prompt'].__setitem__(0, 999)))),
     ValueError, r'example 4: .*ids in 0\.\.17'),
    ('example without an answer', lambda e, m: run_train(e, *broken_dataset(e, lambda d: edit_rows(
        d / 'val.jsonl', lambda rows: rows[1].pop('answer')))), ValueError, 'val.jsonl, example 2'),
    ('meta.json is not an object', lambda e, m: run_train(e, *broken_dataset(
        e, lambda d: (d / 'meta.json').write_text('[1, 2]'))), ValueError, 'meta.json lacks'),
    ('prepare.py --src without the files', lambda e, m: prepare(e, '--src', str(e.tmp / 'empty')),
     FileNotFoundError, 'has no dialogsum.train.jsonl'),
    ('prepare.py raw file cut short',
     lambda e, m: prepare(e, '--src', truncated_raw(e), '--out_dir', fresh(e)),
     ValueError, 'dialogsum.train.jsonl line 4 is not valid JSON'),
    ('prepare.py raw records of another dataset', lambda e, m: prepare(
        e, '--src', raw_dialogsum(e, [{'source': ['x'], 'target': ['y']}]), '--out_dir', fresh(e)),
     ValueError, "lacks 'dialogue'"),
    ('prepare.py a list field given as a string',
     lambda e, m: prepare_scitldr(e, {'source': 'One. Two.', 'target': ['x']}),
     ValueError, r"train.jsonl line 2: field 'source' must be a list of strings \(got str"),
    ('prepare.py an empty list of summaries',
     lambda e, m: prepare_scitldr(e, {'source': ['One.'], 'target': []}),
     ValueError, r"line 2: field 'target' must be a list of strings \(got list \[\]"),
    ('prepare.py a summary that is a number', lambda e, m: prepare(
        e, '--src', raw_dialogsum(e, [{'dialogue': 'Hi.', 'summary': 5}]), '--out_dir', fresh(e)),
     ValueError, r"dialogsum.train.jsonl line 1: field 'summary' must be a string \(got int 5\)"),
    ('prepare.py a record that is not an object', lambda e, m: prepare(
        e, '--src', raw_dialogsum(e, [['Hi.', 'A greeting.']]), '--out_dir', fresh(e)),
     ValueError, "line 1: the record is a list, not an object with 'dialogue'"),
    ('prepare.py --limit=0', lambda e, m: prepare(e, '--limit', '0'),
     ValueError, '--limit must be at least 1'),
    ('prepare.py unknown option', lambda e, m: prepare(e, '--srcc', 'x'),
     ValueError, 'unrecognized arguments'),
    # checkpoints
    ('init_from a text file', lambda e, m: run_train(e, f"--init_from={e.tmp / 'text.pt'}"),
     ValueError, 'not a nanoBidir checkpoint'),
    ('init_from a torch file of a tensor',
     lambda e, m: run_train(e, f"--init_from={e.tmp / 'tensor.pt'}"),
     ValueError, 'not a checkpoint written by train.py'),
    ('resume from a checkpoint cut short', lambda e, m: (
        shutil.copytree(e.run, e.tmp / 'cut'),
        (e.tmp / 'cut' / 'ckpt.pt').write_bytes((e.tmp / 'cut' / 'ckpt.pt').read_bytes()[:3000]),
        run_train(e, '--init_from=resume', out=str(e.tmp / 'cut'))), ValueError, 'damaged'),
    ('resume with another learning rate',
     lambda e, m: run_train(e, '--init_from=resume', '--learning_rate=0.5',
                            out=shutil.copytree(e.run, fresh(e))),
     ValueError, 'learning_rate'),
    ('resume a moved run, named relatively', moved_run_resumes, None, None),
    ('init_from its own checkpoint',
     lambda e, m: run_train(e, f'--init_from={e.run}/ckpt.pt', '--overwrite=True', out=e.run),
     ValueError, "this run's own checkpoint"),
    ('resume a run killed before its first checkpoint',
     lambda e, m: run_train(e, '--init_from=resume', out=no_ckpt(e)),
     ValueError,
     'stopped before writing its first checkpoint.*start it over with --overwrite=True'),
    ('restart it without overwrite', lambda e, m: run_train(e, out=no_ckpt(e)),
     ValueError, 'cannot be resumed: start it over with --overwrite=True'),
    ('adapters whose base is gone', lambda e, m: checkpoint.model_from_checkpoint(copy_ckpt(
        f'{e.lora}/ckpt.pt', e.tmp / 'orphan.pt', init_from=str(e.tmp / 'gone.pt'))),
     FileNotFoundError, 'not there any more'),
    # weights
    ('safetensors header without dtype',
     lambda e, m: weights.load_gpt2(safetensors_without_fields(e)),
     ValueError, 'needs dtype, shape and data_offsets'),
    ('config.json cut short',
     lambda e, m: weights.load_gpt2(broken_gpt2(e, 'config.json', b'{"n_layer": 1, "n_he')),
     ValueError, 'config.json is not valid JSON'),
    ('a GPT-2 folder without its files', lambda e, m: weights.load_gpt2(str(e.tmp / 'empty')),
     FileNotFoundError, 'a GPT-2 directory needs'),
    ('GPT-2 offline', lambda e, m: offline_gpt2(e, m), ConnectionError, 'could not download'),
    # sampling
    ('sample: negative top_k', lambda e, m: sample_main(e, '--temperature=1.0', '--top_k=-1'),
     ValueError, 'top_k=-1'),
    ('sample: empty prompt', lambda e, m: sample_main(e, '--start='),
     ValueError, 'the prompt is empty'),
    ('sample: only separators', lambda e, m: sample_main(e, '--start=, ,'),
     ValueError, 'holds no prompt'),
    ('sample: FILE: names a folder', lambda e, m: sample_main(e, f'--start=FILE:{e.tmp}'),
     FileNotFoundError, 'is not a regular file'),
    ('sample: FILE: names a binary file',
     lambda e, m: sample_main(e, f"--start=FILE:{e.run}/ckpt.pt"),
     ValueError, 'not a UTF-8 text file'),
    ('plot.py on a folder without a run', lambda e, m: plot.main([str(e.tmp / 'empty')]),
     FileNotFoundError, 'holds no log.jsonl: pass the out_dir of a run'),
    ('sample: no samples asked for', lambda e, m: sample_main(e, '--num_samples=0'),
     ValueError, 'num_samples=0'),
    ('sample: a tensor as checkpoint', lambda e, m: sample.main([f"--ckpt={e.tmp / 'tensor.pt'}"]),
     ValueError, 'not a checkpoint written by train.py'),
    ('sample: the run folder for its checkpoint', lambda e, m: sample.main([f'--ckpt={e.run}']),
     FileNotFoundError, 'did you mean .*ckpt.pt'),
    ('sample: two models at once', lambda e, m: sample_main(e, '--init_from=gpt2'),
     ValueError, 'not both'),
    ('sample: unknown device', lambda e, m: sample_main(e, '--device=tpu'),
     ValueError, "device='tpu'"),
    # other scripts
    ('bench: no timed iterations', lambda e, m: bench.main(['--iters=0']),
     ValueError, 'iters=0: must be >= 1'),
    ('bench: token counts that are not numbers', lambda e, m: bench.main(['--gen_tokens=32,abc']),
     ValueError, 'gen_tokens'),
]


@pytest.mark.parametrize('name, act, error, message', ROWS, ids=[r[0] for r in ROWS])
def test_bad_input(e, monkeypatch, capsys, name, act, error, message):
    if error is None:
        act(e, monkeypatch)
        return
    with pytest.raises(error, match=message):
        act(e, monkeypatch)


# -----------------------------------------------------------------------------
# what the user sees: one line, exit status 1

def script(*argv):
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    env.pop('NANOBIDIR_DEBUG', None)
    return subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize('argv, message', [
    (lambda e: ['train.py', str(e.tmp / 'syntax.py')], 'failed to run: SyntaxError'),
    (lambda e: ['sample.py', f'--ckpt={e.run}/ckpt.pt', '--temperature=-1.0'],
     'temperature=-1.0: must be >= 0'),
    (lambda e: ['data/scitldr/prepare.py', '--src', str(e.tmp / 'empty')], 'has no train.jsonl'),
], ids=['train.py', 'sample.py', 'prepare.py'])
def test_the_user_sees_one_error_line(e, argv, message):
    r = script(*argv(e))
    assert r.returncode == 1 and r.stdout == '', (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and message in lines[0], r.stderr


def test_the_handler_reports_bugs_in_one_line_and_shows_them_when_asked(monkeypatch, capsys):
    def fails(main):
        with pytest.raises(SystemExit) as exit_:
            runtime.run_main(main)
        return exit_.value.code, capsys.readouterr().err

    def raising(e):
        def main():
            raise e
        return main
    monkeypatch.delenv('NANOBIDIR_DEBUG', raising=False)
    code, err = fails(raising(KeyError('surprise')))
    assert (code == 1 and err.startswith("error: unexpected KeyError: 'surprise'")
            and 'NANOBIDIR_DEBUG=1' in err)
    assert fails(lambda: open('/no/such/file')) == (
        1, 'error: No such file or directory: /no/such/file\n')  # the file, without '[Errno 2]'
    # always one line
    assert fails(raising(ValueError('first\nsecond'))) == (1, 'error: first second\n')
    assert fails(raising(KeyboardInterrupt())) == (130, 'error: interrupted\n')
    # raised inside torch: a bug
    code, err = fails(lambda: torch.nn.functional.dropout(torch.ones(2), p=2.0))
    assert (code == 1 and err.startswith('error: unexpected ValueError: dropout probability')
            and 'NANOBIDIR' in err)
    monkeypatch.setenv('NANOBIDIR_DEBUG', '1')
    with pytest.raises(KeyError):  # the traceback, for whoever debugs it
        runtime.run_main(raising(KeyError('surprise')))


# -----------------------------------------------------------------------------
# the seven inputs that once gave a silently wrong result

@pytest.mark.parametrize('variant', list(VARIANTS))
def test_1_bitune_is_refused_exactly_when_pass_a_cannot_change_the_mixed_kv(variant, tiny_gpt):
    """The rule, checked against the model: Pass A's keys/values differ from a causal pass's (with
    every adapter random) exactly in the configurations check_bidir_reaches_kv accepts."""
    for n_layer in (1, 2):
        for target in ('c_attn', 'c_proj', 'c_fc'):
            gpt = add_adapters(tiny_gpt(n_layer=n_layer), names=('causal', 'bidir'), r=2,
                               targets=(target,))
            randomize_adapters(gpt)
            bt = Bitune(gpt, variant=variant)
            batch = tasks.collate([{'prompt': [1, 5, 7, 9, 2], 'answer': [4, 3]},
                                   {'prompt': [1, 8, 2], 'answer': [3]}])
            prefix, pos, valid = batch['idx'][:, :4], batch['pos'][:, :4], batch['valid'][:, :4]
            with torch.no_grad():
                kv_a, _ = bt.pass_a(prefix, pos, valid)
                kv_b, _ = bt.pass_b(prefix, pos, valid)
            # (B, 1, T, 1): padding keys are never read, so they may differ
            real = valid[:, None, :, None]
            differs = any(not torch.allclose(a[real.expand_as(a)], b[real.expand_as(b)])
                          for layer_a, layer_b in zip(kv_a, kv_b) for a, b in zip(layer_a, layer_b))
            try:
                check_bidir_reaches_kv(variant, n_layer, target)
                accepted = True
            except ValueError:
                accepted = False
            assert accepted == differs, (variant, n_layer, target)


def test_1_train_refuses_bitune_that_trains_plain_lora_and_accepts_one_that_does_not(e):
    with pytest.raises(ValueError, match='cannot change any key or value'):
        run_train(e, '--method=bitune', '--peft=lora', '--lora_targets=c_fc')
    out = fresh(e)
    run_train(e, '--method=bitune', '--peft=lora', '--lora_targets=c_attn', '--learning_rate=0.01',
              out=out)
    rows = read_log(out)
    assert rows[0]['alpha_k'] == [0.5] and rows[-1]['alpha_k'] != [0.5]  # the mixing learns


def test_2_sampling_refuses_a_negative_temperature(e, tiny_gpt):
    with pytest.raises(ValueError, match='temperature=-1.0: must be >= 0'):
        sample_main(e, '--temperature=-1.0')
    idx = torch.tensor([[1, 2, 3]])
    for bad in (dict(temperature=-1.0), dict(temperature=1.0, top_k=0)):
        with pytest.raises(ValueError, match='temperature must be >= 0 and top_k >= 1'):
            tiny_gpt().generate(idx, 2, **bad)


def test_3_no_checkpoint_is_written_of_a_model_that_is_not_finite(e):
    """A learning rate that blows up before the first evaluation: the message says no checkpoint
    exists, and none does."""
    out = fresh(e)
    with pytest.raises(train.StopTraining, match='no checkpoint was written') as stop:
        run_train(e, '--learning_rate=1e6', '--warmup_iters=0', '--max_iters=40',
                  '--eval_interval=30', out=out)
    assert 'keeps' not in str(stop.value) and not os.path.exists(os.path.join(out, 'ckpt.pt'))


def test_3_a_non_finite_evaluation_is_not_saved_and_the_message_names_the_last_checkpoint(
        e, monkeypatch):
    real, calls = train.evaluate, []

    def val_loss_turns_nan(*a, **k):  # the third evaluation (iteration 4) is not finite
        calls.append(1)
        val_loss, scores, lines = real(*a, **k)
        return (float('nan') if len(calls) == 3 else val_loss), scores, lines
    monkeypatch.setattr(train, 'evaluate', val_loss_turns_nan)
    out = fresh(e)
    with pytest.raises(train.StopTraining,
                       match=r'iteration 4; .*ckpt.pt keeps the last finite model \(iteration 2\)'):
        run_train(e, '--max_iters=6', out=out)
    ckpt = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)
    assert ckpt['iter_num'] == 2 and all(torch.isfinite(v).all() for v in ckpt['model'].values())


def test_4_a_gpt2_model_refuses_a_dataset_with_another_vocabulary(e):
    with pytest.raises(ValueError, match="reads GPT-2's BPE tokens, "
                                         "but dataset 'toy' uses the 'char' tokenizer"):
        run_train(e, f'--init_from={e.gpt2}')


def test_5_adapters_refuse_a_base_they_were_not_trained_on(e):
    model, _, _ = checkpoint.model_from_checkpoint(f'{e.lora}/ckpt.pt')  # their own base: fine
    assert torch.load(f'{e.lora}/ckpt.pt', weights_only=True)['base_fingerprint']
    other = copy_ckpt(f'{e.lora}/ckpt.pt', e.tmp / 'other_base.pt', init_from=f'{e.base2}/ckpt.pt')
    with pytest.raises(ValueError, match='trained on another base'):
        checkpoint.model_from_checkpoint(other)
    with pytest.raises(ValueError, match='trained on another base'):  # sample.py loads the same way
        sample.main([f'--ckpt={other}'])


def test_6_a_fresh_run_never_replaces_an_old_one_unless_asked(e):
    out = shutil.copytree(e.run, fresh(e))
    before = open(os.path.join(out, 'log.jsonl')).read()
    with pytest.raises(ValueError,
                       match='already holds a run .*--init_from=resume.*--overwrite=True'):
        run_train(e, '--learning_rate=0.01', out=out)
    assert open(os.path.join(out, 'log.jsonl')).read() == before
    run_train(e, '--learning_rate=0.01', '--overwrite=True', out=out)
    assert open(os.path.join(out, 'log.jsonl')).read() != before and len(read_log(out)) == 2
    assert (torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)['config']['learning_rate']
            == 0.01)


def test_6_labs_starts_an_unfinished_arm_over_with_overwrite(tmp_path, monkeypatch):
    commands = []
    monkeypatch.setattr(runner.subprocess, 'Popen', lambda cmd, **k: commands.append(cmd))
    runner.launch({'out_dir': str(tmp_path / 'arm'), 'argv': ['--max_iters=2']}, threads=1)
    assert commands[0][1:] == ['train.py', '--max_iters=2', '--overwrite=True']


def test_7_resume_after_a_kill_during_a_checkpoint_write_logs_each_row_once(e, monkeypatch):
    straight = fresh(e)
    run_train(e, '--max_iters=6', out=straight)
    real_save, saves = checkpoint.save_checkpoint, []

    # the second checkpoint (iteration 4) never reaches its name
    def killed_while_writing(path, ckpt):
        saves.append(1)
        if len(saves) == 2:
            open(path + '.tmp', 'wb').write(b'half a checkpoint')
            raise KeyboardInterrupt
        real_save(path, ckpt)
    monkeypatch.setattr(checkpoint, 'save_checkpoint', killed_while_writing)
    killed = fresh(e)
    with pytest.raises(KeyboardInterrupt):
        run_train(e, '--max_iters=6', out=killed)
    monkeypatch.setattr(checkpoint, 'save_checkpoint', real_save)
    with open(os.path.join(killed, 'log.jsonl'), 'a') as f:
        f.write('{"iter": 6, "val_lo')  # and a row cut in the middle, as a kill can leave it
    lines = open(os.path.join(killed, 'log.jsonl')).read().splitlines()
    # 4 is past the checkpoint (iteration 2)
    assert [json.loads(line)['iter'] for line in lines[:3]] == [0, 2, 4]
    run_train(e, '--max_iters=6', '--init_from=resume', out=killed)
    a, b = read_log(straight), read_log(killed)
    assert [r['iter'] for r in b] == [0, 2, 4, 6]
    assert ([(r.get('train_loss'), r['val_loss']) for r in a]
            == [(r.get('train_loss'), r['val_loss']) for r in b])


# -----------------------------------------------------------------------------
# a full disk: the old file stays, no .tmp is left to keep the disk full, one line says what to do

def full_disk_for(monkeypatch, name, nth=1):
    """From the nth file written to `name` (through atomic_file) on, the disk is full: the .tmp is
    created, then every write fails as on a full disk (/dev/full answers ENOSPC)."""
    real_open, calls = open, []

    def open_(path, mode='r', *a, **k):
        if os.path.basename(path) == name + '.tmp':
            calls.append(1)
            if len(calls) >= nth:
                real_open(path, mode).close()
                return real_open('/dev/full', mode)
        return real_open(path, mode, *a, **k)
    monkeypatch.setattr(runtime, "open", open_, raising=False)


@pytest.mark.skipif(not os.path.exists('/dev/full'), reason='needs /dev/full')
def test_8_a_full_disk_keeps_the_last_checkpoint_and_the_log_and_leaves_no_tmp(e, monkeypatch):
    out = fresh(e)
    with monkeypatch.context() as m:
        full_disk_for(m, 'ckpt.pt', nth=2)  # the checkpoint of iteration 4
        with pytest.raises(OSError) as err:
            run_train(e, '--max_iters=4', out=out)
    assert runtime.describe(err.value).startswith(f"the disk is full (writing {out}/ckpt.pt): "
                                                  f"free space on it")
    assert not os.path.exists(f'{out}/ckpt.pt.tmp')
    assert torch.load(f'{out}/ckpt.pt', weights_only=True)['iter_num'] == 2
    log = open(f'{out}/log.jsonl').read()
    with monkeypatch.context() as m:
        full_disk_for(m, 'log.jsonl')  # the resume's trim_log
        with pytest.raises(OSError, match='No space left'):
            run_train(e, '--max_iters=4', '--init_from=resume', out=out)
    assert open(f'{out}/log.jsonl').read() == log and not os.path.exists(f'{out}/log.jsonl.tmp')
    run_train(e, '--max_iters=4', '--init_from=resume', out=out)  # once there is space, it goes on
    assert [r['iter'] for r in read_log(out)] == [0, 2, 4]


# -----------------------------------------------------------------------------
# a run trained with adapters as the base of another: what it learned is folded in, not dropped

@pytest.mark.parametrize('peft, lr', [('lora', 0.05), ('dora', 0.05), ('ia3', 1.0)])
def test_9_a_scratch_run_with_adapters_is_a_base_with_its_adapters_folded_in(e, capsys, peft, lr):
    a, b = fresh(e), fresh(e)
    run_train(e, f'--peft={peft}', f'--learning_rate={lr}', '--max_iters=4', out=a)
    first, last = read_log(a)[0]['val_loss'], read_log(a)[-1]['val_loss']
    # the adapters learned something, which dropping them would lose
    assert abs(first - last) > 0.005
    capsys.readouterr()
    # fine-tune every weight of it, on the same data
    run_train(e, f'--init_from={a}/ckpt.pt', out=b)
    assert f"its trained {peft} adapter is folded into the base weights" in capsys.readouterr().out
    # iteration 0 starts where A ended
    assert read_log(b)[0]['val_loss'] == pytest.approx(last, rel=1e-5)
    c = fresh(e)
    run_train(e, f'--init_from={b}/ckpt.pt', '--peft=lora', out=c)  # and adapters on it again
    assert read_log(c)[0]['val_loss'] == pytest.approx(read_log(b)[-1]['val_loss'], rel=1e-5)


def test_9_an_adapter_only_checkpoint_is_a_base_with_its_own_base_rebuilt_and_folded(e, capsys):
    out = fresh(e)
    # e.lora: LoRA on e.base, saved without the base
    run_train(e, f'--init_from={e.lora}/ckpt.pt', out=out)
    assert 'its trained lora adapter is folded into the base weights' in capsys.readouterr().out
    assert read_log(out)[0]['val_loss'] == pytest.approx(read_log(e.lora)[-1]['val_loss'], rel=1e-5)
