"""
Tests for utils/weights.py: the safetensors reader (files written by tests/helpers.py), the GPT-2
key mapping, loading into GPT, and clear errors.
Run: python -m pytest -q tests/test_weights.py

The checkpoints are tiny random GPT-2s written in the hub's layout (Conv1D weights stored
(in, out)); the logits of the loaded model are compared with a plain-torch GPT-2 forward written
here from those raw tensors.
"""
import io
import json
import math
import os
import urllib.error

import pytest
import torch

from adapters import add_adapters
from helpers import write_safetensors
from utils import weights

CFG = dict(n_layer=2, n_head=2, n_embd=8, n_positions=16, vocab_size=11)


def hub_tensors(seed=0, prefix='transformer.', buffers=True):
    """Random weights named and shaped as in a GPT-2 hub checkpoint (no lm_head: tied to wte)."""
    g = torch.Generator().manual_seed(seed)
    C, V, T = CFG['n_embd'], CFG['vocab_size'], CFG['n_positions']
    # large enough that a wrong gelu/eps/transpose shows up
    r = lambda *s: torch.randn(*s, generator=g) * 0.3
    t = {'wte.weight': r(V, C), 'wpe.weight': r(T, C), 'ln_f.weight': 1 + r(C), 'ln_f.bias': r(C)}
    for i in range(CFG['n_layer']):
        h = f'h.{i}.'
        t |= {h + 'ln_1.weight': 1 + r(C), h + 'ln_1.bias': r(C),
              h + 'ln_2.weight': 1 + r(C), h + 'ln_2.bias': r(C),
              h + 'attn.c_attn.weight': r(C, 3 * C), h + 'attn.c_attn.bias': r(3 * C),  # (in, out)
              h + 'attn.c_proj.weight': r(C, C), h + 'attn.c_proj.bias': r(C),
              h + 'mlp.c_fc.weight': r(C, 4 * C), h + 'mlp.c_fc.bias': r(4 * C),
              h + 'mlp.c_proj.weight': r(4 * C, C), h + 'mlp.c_proj.bias': r(C)}
        if buffers:  # old checkpoints carry the causal mask as a buffer
            t[h + 'attn.bias'] = torch.tril(torch.ones(T, T)).view(1, 1, T, T)
            t[h + 'attn.masked_bias'] = torch.tensor(-1e4)
    return {prefix + k: v for k, v in t.items()}


def write_ckpt(d, tensors, cfg=CFG):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, 'config.json'), 'w') as f:
        json.dump({'model_type': 'gpt2', **cfg}, f)
    write_safetensors(os.path.join(d, 'model.safetensors'), tensors, metadata={'format': 'pt'})
    return str(d)


def reference_gpt2(w, idx):
    """GPT-2 forward from hub-layout tensors (keys without prefix), independent of model.py."""
    nh, C = CFG['n_head'], CFG['n_embd']
    B, T = idx.shape

    def ln(x, p):
        mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        return (x - mu) / torch.sqrt(var + 1e-5) * w[p + '.weight'] + w[p + '.bias']

    gelu = lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    lin = lambda x, p: x @ w[p + '.weight'] + w[p + '.bias']  # Conv1D: x @ W with W (in, out)
    x = w['wte.weight'][idx] + w['wpe.weight'][:T]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for i in range(CFG['n_layer']):
        h = f'h.{i}.'
        q, k, v = lin(ln(x, h + 'ln_1'), h + 'attn.c_attn').split(C, dim=2)
        q, k, v = (z.view(B, T, nh, C // nh).transpose(1, 2) for z in (q, k, v))  # (B, nh, T, hs)
        att = ((q @ k.transpose(-2, -1) / math.sqrt(C // nh))
               .masked_fill(~causal, float('-inf')).softmax(-1))
        y = (att @ v).transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        x = x + lin(y, h + 'attn.c_proj')
        x = x + lin(gelu(lin(ln(x, h + 'ln_2'), h + 'mlp.c_fc')), h + 'mlp.c_proj')
    return ln(x, 'ln_f') @ w['wte.weight'].T


# ---------------------------------------------------------------------------- safetensors

@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
def test_safetensors_roundtrip(tmp_path, dtype):
    t = {'a': torch.randn(3, 5).to(dtype), 'b.c': torch.randn(7).to(dtype),
         'scalar': torch.tensor(2.5, dtype=dtype), 'empty': torch.zeros(0, 4, dtype=dtype),
         'ids': torch.arange(6, dtype=torch.int64).view(2, 3)}
    p = str(tmp_path / 'x.safetensors')
    write_safetensors(p, t, metadata={'format': 'pt'})
    back = weights.read_safetensors(p)
    assert set(back) == set(t)  # __metadata__ is not a tensor
    for k in t:
        assert (back[k].dtype == t[k].dtype and back[k].shape == t[k].shape
                and torch.equal(back[k], t[k]))
    assert not os.path.exists(p + '.tmp')


def test_safetensors_layout(tmp_path):
    # check the raw bytes against the format itself, so the writer cannot hide a reader bug
    p = str(tmp_path / 'x.safetensors')
    write_safetensors(p, {'w': torch.tensor([1.0, -2.0], dtype=torch.float16)})
    raw = open(p, 'rb').read()
    n = int.from_bytes(raw[:8], 'little')
    assert json.loads(raw[8:8 + n]) == {'w': {'dtype': 'F16', 'shape': [2], 'data_offsets': [0, 4]}}
    # 1.0 and -2.0 in little-endian f16
    assert (8 + n) % 8 == 0 and raw[8 + n:] == bytes.fromhex('003c00c0')


def test_safetensors_bad_files(tmp_path):
    p = tmp_path / 'bad.safetensors'
    p.write_bytes(b'PK\x03\x04 this is a zip, not safetensors' * 3)
    with pytest.raises(ValueError, match='not a valid safetensors file'):
        weights.read_safetensors(str(p))
    p.write_bytes(b'abc')
    with pytest.raises(ValueError, match='only 3 bytes'):
        weights.read_safetensors(str(p))
    good = str(tmp_path / 'good.safetensors')
    write_safetensors(good, {'w': torch.randn(4, 4)})
    p.write_bytes(open(good, 'rb').read()[:-8])  # truncated download
    with pytest.raises(ValueError, match="'w'.*truncated"):
        weights.read_safetensors(str(p))
    h = json.dumps({'w': {'dtype': 'F8_E4M3', 'shape': [2], 'data_offsets': [0, 2]}}).encode()
    p.write_bytes(len(h).to_bytes(8, 'little') + h + b'\0\0')
    with pytest.raises(ValueError, match='F8_E4M3'):
        weights.read_safetensors(str(p))


# ---------------------------------------------------------------------------- GPT-2 mapping

def test_load_gpt2_mapping(tmp_path):
    raw = hub_tensors()
    cfg, sd = weights.load_gpt2(write_ckpt(tmp_path / 'a', raw))
    assert cfg == dict(n_layer=2, n_head=2, n_embd=8, vocab_size=11, block_size=16, bias=True,
                       dropout=0.0)
    # mask buffers dropped
    assert not any(k.endswith(('.attn.bias', '.attn.masked_bias')) for k in sd)
    assert all(k.startswith('transformer.') for k in sd if k != 'lm_head.weight')
    # Conv1D (in, out) -> Linear (out, in); everything else unchanged; lm_head tied to wte
    assert torch.equal(sd['transformer.h.1.mlp.c_fc.weight'],
                       raw['transformer.h.1.mlp.c_fc.weight'].T)
    assert torch.equal(sd['transformer.h.0.attn.c_attn.bias'],
                       raw['transformer.h.0.attn.c_attn.bias'])
    assert torch.equal(sd['lm_head.weight'], raw['transformer.wte.weight'])
    # the other key style (no prefix, no buffers) gives the same state dict
    _, sd2 = weights.load_gpt2(write_ckpt(tmp_path / 'b', hub_tensors(prefix='', buffers=False)))
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)


def test_load_gpt2_bad_paths(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'gpt3'.*gpt2-medium"):
        weights.load_gpt2('gpt3')
    with pytest.raises(FileNotFoundError, match='not a directory'):
        weights.load_gpt2(str(tmp_path / 'nope'))
    d = write_ckpt(tmp_path / 'c', hub_tensors())
    os.remove(os.path.join(d, 'model.safetensors'))
    with pytest.raises(FileNotFoundError, match='model.safetensors not found'):
        weights.load_gpt2(d)


def test_download_caches_once(tmp_path, monkeypatch):
    src = write_ckpt(tmp_path / 'hub', hub_tensors())
    calls = []

    def fake_urlopen(url, timeout=None):
        calls.append(url)
        data = open(os.path.join(src, url.rsplit('/', 1)[1]), 'rb').read()
        r = io.BytesIO(data)
        r.headers = {'Content-Length': str(len(data))}
        return r

    monkeypatch.setattr(weights.urllib.request, 'urlopen', fake_urlopen)
    monkeypatch.setenv('NANOBIDIR_CACHE', str(tmp_path / 'cache'))
    cfg, sd = weights.load_gpt2('gpt2')
    assert calls == ['https://huggingface.co/openai-community/gpt2/resolve/main/config.json',
                     'https://huggingface.co/openai-community/gpt2/resolve/main/model.safetensors']
    assert sorted(os.listdir(tmp_path / 'cache' / 'gpt2')) == ['config.json', 'model.safetensors']
    weights.load_gpt2('gpt2')  # second time: from the cache, no network
    assert len(calls) == 2


def test_download_offline(tmp_path, monkeypatch):
    def offline(url, timeout=None):
        raise urllib.error.URLError('[Errno -3] Temporary failure in name resolution')

    monkeypatch.setattr(weights.urllib.request, 'urlopen', offline)
    with pytest.raises(ConnectionError) as e:
        weights.load_gpt2('gpt2-medium', cache_dir=str(tmp_path))
    msg = str(e.value)
    assert 'openai-community/gpt2-medium' in msg and 'by hand' in msg and 'directory' in msg
    assert os.listdir(tmp_path / 'gpt2-medium') == []  # no half-written files left behind


# ---------------------------------------------------------------------------- into the model

def test_from_pretrained_matches_reference(tmp_path):
    model_mod = pytest.importorskip('model')
    idx = torch.tensor([[1, 5, 2, 9, 0, 3, 10], [4, 4, 7, 1, 8, 2, 6]])
    for name, raw in [('a', hub_tensors()), ('b', hub_tensors(prefix='', buffers=False))]:
        model = model_mod.GPT.from_pretrained(write_ckpt(tmp_path / name, raw)).eval()
        with torch.no_grad():
            logits = model(idx)[0]
        ref = reference_gpt2({k.removeprefix('transformer.'): v for k, v in raw.items()}, idx)
        torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)


def test_load_into_errors(tmp_path):
    model_mod = pytest.importorskip('model')
    cfg, sd = weights.load_gpt2(write_ckpt(tmp_path / 'a', hub_tensors()))
    model = model_mod.GPT(model_mod.GPTConfig(**cfg))
    bad = dict(sd)
    del bad['transformer.h.1.ln_2.bias']
    bad['transformer.h.0.attn.c_proj.weight'] = torch.zeros(8, 9)
    bad['transformer.h.7.extra'] = torch.zeros(1)
    with pytest.raises(ValueError) as e:
        weights.load_into(model, bad)
    msg = str(e.value)
    assert "missing keys: ['transformer.h.1.ln_2.bias']" in msg
    assert "unexpected keys: ['transformer.h.7.extra']" in msg
    assert 'transformer.h.0.attn.c_proj.weight: expected (8, 8), got (8, 9)' in msg
    # a model with LoRA adapters still loads a plain checkpoint, and the (fresh) adapters are kept
    add_adapters(model, names=('causal',), r=2)
    weights.load_into(model, sd)
    assert torch.equal(model.transformer.h[0].mlp.c_fc.weight,
                       sd['transformer.h.0.mlp.c_fc.weight'])
    assert torch.equal(model.transformer.h[0].mlp.c_fc.lora_B['causal'], torch.zeros(32, 2))
