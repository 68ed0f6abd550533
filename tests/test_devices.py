"""dtype='auto' by what a GPU does well (faked where there is no GPU): bfloat16 on CUDA compute
capability 8.0 and up, float16 with the GradScaler below it (T4, V100: bfloat16 only emulated),
float32 on the CPU and on Apple's MPS."""
import pytest
import torch

from configurator import pick_device, pick_dtype


@pytest.mark.parametrize('capability, card, expect', [
    ((7, 0), 'V100', 'float16'), ((7, 5), 'T4', 'float16'), ((8, 0), 'A100', 'bfloat16'),
    ((8, 6), 'RTX 3090', 'bfloat16'), ((9, 0), 'H100', 'bfloat16')])
def test_auto_dtype_follows_the_cuda_compute_capability(monkeypatch, capability, card, expect):
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda *a, **k: True)  # as a T4 says
    assert pick_dtype('auto', 'cuda') == pick_dtype('auto', 'cuda:1') == expect, card


def test_auto_dtype_is_float32_off_cuda_and_a_given_dtype_is_kept():
    assert pick_dtype('auto', 'cpu') == pick_dtype('auto', 'mps') == 'float32'
    assert pick_dtype('bfloat16', 'cpu') == 'bfloat16'


def test_auto_device_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(torch.backends.mps, 'is_available', lambda: True)
    assert pick_device('auto') == 'mps'
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    assert pick_device('auto') == 'cuda'


def test_train_uses_the_gradscaler_exactly_when_the_dtype_is_float16(monkeypatch, tmp_path):
    import train
    seen = {}
    real = torch.amp.GradScaler

    def scaler(device, enabled):
        seen['enabled'] = enabled
        return real('cpu', enabled=False)  # no CUDA here: the run itself stays float32 on the CPU
    monkeypatch.setattr(train.torch.amp, 'GradScaler', scaler)
    monkeypatch.setattr(train, 'pick_dtype', lambda name, device: 'float16')
    monkeypatch.setattr(train.torch, 'autocast', lambda **k: __import__('contextlib').nullcontext())
    train.main(['--method=causal', '--n_layer=1', '--n_head=1', '--n_embd=16', '--max_iters=1',
                '--eval_interval=1', '--eval_iters=1', '--eval_examples=2', '--toy_n_train=32',
                '--toy_n_val=4', '--batch_size=4', '--device=cpu', f'--out_dir={tmp_path}/o'])
    assert seen == {'enabled': True}
