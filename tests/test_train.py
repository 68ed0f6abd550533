"""train.py and sample.py end to end, on tiny models and tiny toy tasks."""
import json
import os

import pytest
import torch

from utils import checkpoint
import sample
import train
from helpers import kill_after_first_checkpoint

TINY = ['--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=32', '--batch_size=16',
        '--eval_iters=2', '--eval_examples=16', '--toy_n_train=400', '--toy_n_val=40',
        '--toy_max_len=6', '--warmup_iters=5', '--device=cpu']


def run(tmp_path, *args, name='out'):
    out = str(tmp_path / name)
    return train.main(TINY + [f'--out_dir={out}', *args]), out


def read_log(out):
    with open(os.path.join(out, 'log.jsonl')) as f:
        return [json.loads(line) for line in f]


def test_a_tiny_run_writes_its_log_checkpoint_and_plots(tmp_path):
    last, out = run(tmp_path, '--method=causal', '--max_iters=6', '--eval_interval=3')
    rows = read_log(out)
    assert [r['iter'] for r in rows] == [0, 3, 6]  # 0: before training
    for key in ('train_loss', 'val_loss', 'exact_match', 'em_R', 'tokens_per_s', 'elapsed_s', 'lr'):
        assert key in rows[-1], key
    for f in ('ckpt.pt', 'loss.png', 'metric.png'):
        assert os.path.getsize(os.path.join(out, f)) > 0, f
    ckpt = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)  # plain types only
    assert ckpt['iter_num'] == 6 and not ckpt['adapter_only']
    assert not any('_orig_mod' in k for k in ckpt['model'])
    assert not os.path.exists(os.path.join(out, 'ckpt.pt.tmp'))  # written atomically


def test_resume_after_a_kill_reproduces_the_uninterrupted_run(tmp_path, monkeypatch):
    # dropout: the RNG matters too
    args = ['--method=causal', '--max_iters=8', '--eval_interval=4', '--dropout=0.1']
    run(tmp_path, *args, name='straight')
    straight = read_log(str(tmp_path / 'straight'))

    kill_after_first_checkpoint(monkeypatch, lambda: run(tmp_path, *args, name='killed'))
    run(tmp_path, *args, '--init_from=resume', name='killed')
    resumed = read_log(str(tmp_path / 'killed'))
    assert [r['iter'] for r in resumed] == [0, 4, 8]
    for a, b in zip(straight, resumed):
        assert a.get('train_loss') == b.get('train_loss') and a['val_loss'] == b['val_loss']


def test_a_short_run_learns_an_easy_task_and_sample_py_uses_it(tmp_path, capsys):
    last, out = run(tmp_path, '--method=causal', '--toy_ops=C', '--toy_min_len=2',
                    '--toy_max_len=4', '--toy_n_symbols=5', '--max_iters=500',
                    '--eval_interval=500', '--learning_rate=3e-3', '--eval_examples=40')
    assert last['exact_match'] >= 60, last  # chance is ~0.1%; broken learning stays near 0
    capsys.readouterr()
    answers = sample.main([f'--ckpt={out}/ckpt.pt', '--start=0123 C, 4321 C'])
    assert len(answers) == 2 and '0123 C -> ' in capsys.readouterr().out


def test_lora_fine_tuning_from_a_saved_base_keeps_only_adapters(tmp_path):
    _, base = run(tmp_path, '--method=causal', '--toy_ops=C', '--max_iters=3', '--eval_interval=3',
                  name='base')
    _, out = run(tmp_path, '--method=causal', '--toy_ops=R', '--max_iters=3', '--eval_interval=3',
                 '--peft=lora', f'--init_from={base}/ckpt.pt', '--lora_r=4', name='lora')
    ckpt = torch.load(f'{out}/ckpt.pt', weights_only=True)
    assert ckpt['adapter_only'] and ckpt['model'] and all('lora_' in k for k in ckpt['model'])
    model, gpt, _ = checkpoint.model_from_checkpoint(f'{out}/ckpt.pt')
    base_model, _, _ = checkpoint.model_from_checkpoint(f'{base}/ckpt.pt')
    # the frozen base came back from the base checkpoint, the adapters from the LoRA one
    assert torch.equal(gpt.transformer.wte.weight, base_model.transformer.wte.weight)
    assert torch.equal(gpt.transformer.h[0].attn.c_attn.lora_A['causal'],
                       ckpt['model']['transformer.h.0.attn.c_attn.lora_A.causal'])


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    real_ce, calls = torch.nn.functional.cross_entropy, {'n': 0}

    def ce_turns_nan(*a, **k):
        calls['n'] += 1
        loss = real_ce(*a, **k)
        return loss * float('nan') if calls['n'] > 20 else loss
    monkeypatch.setattr(torch.nn.functional, 'cross_entropy', ce_turns_nan)
    with pytest.raises(train.StopTraining, match='keeps the last finite model'):
        run(tmp_path, '--method=causal', '--max_iters=40', '--eval_interval=5')
    ckpt = torch.load(str(tmp_path / 'out' / 'ckpt.pt'), weights_only=True)
    assert ckpt['iter_num'] in (5, 10, 15)
    assert all(torch.isfinite(v).all() for v in ckpt['model'].values())


@pytest.mark.parametrize('args, message', [
    (['--method=magic'], "method='magic': choose one of"),
    (['--dataset=nope'], "python data/nope/prepare.py --out_dir data/nope"),
    (['--block_size=8'], "Set block_size >= "),
    (['--max_iter=5'], "did you mean max_iters"),
    (['--init_from=resume'], "no checkpoint at"),
    (['--out_dir=out-{methd}'], "braces may only name settings"),
    (['--method=bitune_bai', '--bai_pivots=C'], "bai_pivots='C': choose one of"),
    (['--bitune_variant=halfway'], "bitune_variant='halfway': choose one of"),
    (['--threads=-1'], "threads"),
    # variants that read the prompt once have no causal Pass B to take pivots from
    (['--method=bitune_bai', '--bai_pivots=B', '--bitune_variant=naive'],
     "variant 'naive' does not have"),
    (['--method=bitune_bai', '--bai_pivots=B', '--bitune_variant=no_mixing'],
     "variant 'no_mixing' does not have"),
])
def test_bad_configuration_fails_at_start_up(tmp_path, args, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        run(tmp_path, *args)


def test_threads_sets_torchs_cpu_threads(tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(torch, 'set_num_threads', asked.append)
    run(tmp_path, '--method=causal', '--max_iters=1', '--threads=1')
    sample.main([f'--ckpt={tmp_path / "out" / "ckpt.pt"}', '--start=123 R', '--threads=1'])
    # --threads=0: torch's own default, untouched
    run(tmp_path, '--method=causal', '--max_iters=1', name='default')
    assert asked == [1, 1]


def test_learning_rate_schedule():
    from types import SimpleNamespace
    c = SimpleNamespace(learning_rate=1.0, min_lr=0.1, warmup_iters=10, max_iters=110,
                        decay='cosine')
    assert train.lr_at(0, c) == pytest.approx(0.1) and train.lr_at(9, c) == pytest.approx(1.0)
    assert train.lr_at(60, c) == pytest.approx(0.55) and train.lr_at(110, c) == pytest.approx(0.1)
    c.decay = 'linear'
    assert train.lr_at(35, c) == pytest.approx(0.775)


@pytest.mark.parametrize('method', ['bitune', 'bai', 'bitune_bai'])
def test_each_method_trains_logs_its_numbers_and_samples(tmp_path, method, capsys):
    _, out = run(tmp_path, f'--method={method}', '--max_iters=4', '--eval_interval=2')
    rows = read_log(out)
    if method.startswith('bitune'):
        assert len(rows[-1]['alpha_k']) == 2 and len(rows[-1]['alpha_v']) == 2  # one per layer
        assert rows[0]['alpha_k'] == [0.5, 0.5]  # theta starts at theta_init
        assert rows[0]['alpha_k'] != rows[-1]['alpha_k']  # the mixing scalars are trained
        assert os.path.exists(os.path.join(out, 'alpha.png'))
        ckpt = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)
        assert 'mix_theta_k' in ckpt['model'] and any('lora_A.bidir' in k for k in ckpt['model'])
    if method.endswith('bai'):
        assert rows[-1]['bai_loss'] > 0 and rows[-1]['bai_weight'] == 1.0
    # sample.py rebuilds the same model from the checkpoint
    # (Bitune generates with its two-pass prefill)
    model, _, _ = checkpoint.model_from_checkpoint(os.path.join(out, 'ckpt.pt'))
    assert type(model).__name__ == ('Bitune' if method.startswith('bitune') else 'GPT')
    assert len(sample.main([f'--ckpt={out}/ckpt.pt', '--start=0123 R'])) == 1

