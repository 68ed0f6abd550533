"""model.py and adapters.py: masks, attention, the KV cache, generation, LoRA and the optimizer
groups."""
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import randomize_adapters
from adapters import (AdaptedLinear, adapter, adapter_state_dict, add_adapters,
                      load_adapter_state_dict, mark_only_adapters_trainable, set_adapter)
from model import attention_mask, configure_optimizers, count_params


# ----------------------------------------------------------------------------- forward and masks

def test_default_call_is_nanogpts(tiny_gpt):
    model = tiny_gpt()
    idx = torch.randint(0, 23, (3, 10))
    logits, loss = model(idx)
    assert logits.shape == (3, 10, 23) and loss is None  # every position, not only the last
    targets = torch.randint(0, 23, (3, 10))
    targets[:, :4] = -1
    _, loss = model(idx, targets)
    ref = F.cross_entropy(logits[:, 4:].reshape(-1, 23), targets[:, 4:].reshape(-1))
    assert torch.allclose(loss, ref, atol=1e-6)


def test_causal_mode_does_not_see_the_future(tiny_gpt):
    model = tiny_gpt()
    idx = torch.randint(0, 23, (2, 12))
    changed = idx.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 23
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.allclose(a[:, :7], b[:, :7], atol=1e-6)
    assert not torch.allclose(a[:, 7:], b[:, 7:], atol=1e-4)


def test_bidir_mode_sees_the_last_real_token_but_never_padding(tiny_gpt):
    model = tiny_gpt()
    idx = torch.randint(1, 23, (2, 9))
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[1, 6:] = False  # row 1: 6 real tokens, then padding
    base, _ = model(idx, valid=valid, attn='bidir')
    # changing row 1's last real token changes its first position
    changed = idx.clone()
    changed[1, 5] = (changed[1, 5] + 1) % 23
    out, _ = model(changed, valid=valid, attn='bidir')
    assert not torch.allclose(base[1, 0], out[1, 0], atol=1e-4)
    # changing padding tokens changes nothing at real positions, in either mode
    for attn in ('bidir', 'causal'):
        base, _ = model(idx, valid=valid, attn=attn)
        padded = idx.clone()
        padded[1, 6:] = 0
        out, _ = model(padded, valid=valid, attn=attn)
        assert torch.allclose(base[1, :6], out[1, :6], atol=1e-6)
        assert torch.isfinite(out).all()  # padding queries see themselves, so no NaN anywhere


def test_attention_mask_aligns_the_triangle_bottom_right():
    valid = torch.tensor([[False, True, True, True, True]])
    m = attention_mask(valid, T=2, attn='causal')[0, 0]  # 2 queries at keys 3 and 4
    assert m.tolist() == [[False, True, True, True, False],
                          [False, True, True, True, True]]
    m = attention_mask(valid, T=5, attn='bidir')[0, 0]
    # the padding query sees itself (and the real keys)
    assert m[0].tolist() == [True, True, True, True, True]
    assert m[2].tolist() == [False, True, True, True, True]


def reference_attention(attn_module, x, allowed):
    """softmax(Q K^T / sqrt(d)) V by hand, with an explicit (B, T, T) boolean mask."""
    B, T, C = x.shape
    nh = attn_module.n_head
    q, k, v = attn_module.c_attn(x).split(C, dim=2)
    q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in (q, k, v))
    att = (q @ k.transpose(-2, -1)) / math.sqrt(C // nh)
    att = att.masked_fill(~allowed[:, None], float('-inf')).softmax(-1)
    y = (att @ v).transpose(1, 2).reshape(B, T, C)
    return attn_module.c_proj(y)


@pytest.mark.parametrize('attn', ['causal', 'bidir'])
def test_sdpa_equals_a_plain_softmax_reference(tiny_gpt, attn):
    model = tiny_gpt()
    block = model.transformer.h[0].attn
    x = torch.randn(2, 7, 32)
    valid = torch.ones(2, 7, dtype=torch.bool)
    valid[0, 5:] = False
    mask = attention_mask(valid, 7, attn)
    y, _ = block(x, mask, False, None)
    ref = reference_attention(block, x, mask[:, 0])
    assert (torch.allclose(y[0, :5], ref[0, :5], atol=1e-5)
            and torch.allclose(y[1], ref[1], atol=1e-5))
    # the fast path (no mask object) agrees too
    y_fast, _ = block(x, None, attn == 'causal', None)
    full = torch.ones(2, 7, dtype=torch.bool)
    assert torch.allclose(y_fast,
                          reference_attention(block, x, attention_mask(full, 7, attn)[:, 0]),
                          atol=1e-5)


# ----------------------------------------------------------------------------- KV cache

def test_prefix_kv_fed_back_equals_one_full_forward_and_carries_gradients(tiny_gpt):
    model = tiny_gpt()
    idx = torch.randint(0, 23, (2, 11))
    full, _ = model(idx)
    kv = model.body(idx[:, :6]).kv
    assert len(kv) == 2 and kv[0][0].shape == (2, 2, 6, 16)  # (B, nh, T, hs)
    rest, _ = model(idx[:, 6:], past_kv=kv)
    assert torch.allclose(rest, full[:, 6:], atol=1e-5)
    # the cache keeps its graph: a loss on the continuation reaches the prefix's K and V
    gk, gv = torch.autograd.grad(rest.square().mean(), [kv[0][0], kv[1][1]])
    assert gk.abs().sum() > 0 and gv.abs().sum() > 0


def test_generate_with_cache_equals_full_recomputation_on_a_padded_batch(tiny_gpt):
    model = tiny_gpt()
    prompts = [torch.randint(1, 23, (n,)) for n in (3, 7, 5)]
    P = max(len(p) for p in prompts)
    idx = torch.zeros(3, P, dtype=torch.long)
    valid = torch.zeros(3, P, dtype=torch.bool)
    for i, p in enumerate(prompts):  # left padding
        idx[i, P - len(p):], valid[i, P - len(p):] = p, True
    out = model.generate(idx, 8, temperature=0, valid=valid)
    assert out.shape == (3, P + 8)
    for i, p in enumerate(prompts):  # each row alone, greedy, recomputing everything every step
        seq = p[None]
        for _ in range(8):
            logits, _ = model(seq)
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        assert out[i, P:].tolist() == seq[0, len(p):].tolist()


def decode_with_cat(model, last, kv, valid, pos, n):
    """Greedy decoding with a cache grown by torch.cat (the training path of past_kv): the
    reference that the preallocated cache of generate() must match bit for bit. Returns every
    step's logits."""
    seen, valid = [last], valid.clone()
    for _ in range(n - 1):
        tok, pos = last.argmax(-1, keepdim=True), pos + 1
        valid = torch.cat([valid, torch.ones_like(tok, dtype=torch.bool)], 1)
        out = model.body(tok, pos, valid, past_kv=kv)
        last, kv = model.lm_head(out.x)[:, -1], out.kv
        seen.append(last)
    return torch.stack(seen)


@pytest.mark.parametrize('shape', ['toy', 'gpt2'])
@torch.no_grad()
def test_preallocated_cache_gives_the_logits_of_a_cache_grown_by_cat(shape, monkeypatch):
    """The static KVCache writes in place and attends to the filled columns: the same numbers as
    torch.cat, for the plain prefill and Bitune's, on left-padded batches, toy and GPT-2 shapes."""
    from bitune import Bitune
    from model import GPT, GPTConfig, KVCache
    cfg = (dict(n_layer=4, n_head=4, n_embd=128, vocab_size=18, block_size=64) if shape == 'toy'
           # GPT-2's widths, 2 blocks
           else dict(n_layer=2, n_head=12, n_embd=768, vocab_size=50257, block_size=64))
    torch.manual_seed(0)
    gpt = add_adapters(GPT(GPTConfig(**cfg)), names=('causal', 'bidir'))
    randomize_adapters(gpt)
    bitune = Bitune(gpt).eval()
    set_adapter(gpt, 'causal')
    seen, writes = [], []
    real_append = KVCache.append
    monkeypatch.setattr(KVCache, 'append',
                        lambda self, k, v: writes.append(self.k.size(2)) or real_append(self, k, v))
    real_sample = GPT._sample
    monkeypatch.setattr(GPT, '_sample', staticmethod(
        lambda logits, *a: seen.append(logits) or real_sample(logits, *a)))
    g = torch.Generator().manual_seed(0)
    for _ in range(2):  # two batches of different left padding
        idx = torch.randint(1, cfg['vocab_size'], (4, 9), generator=g)
        # rows of 9, 3, 6, 8 tokens
        valid = torch.arange(9)[None] >= torch.tensor([0, 6, 3, 1])[:, None]
        idx = idx.masked_fill(~valid, 0)
        pos = (valid.long().cumsum(1) - 1).clamp(min=0)
        for model in (gpt, bitune):
            seen.clear(), writes.clear()
            model.generate(idx, 12, temperature=0.0, valid=valid)
            # every decoded token went into the buffers
            assert writes == [9 + 12] * (11 * cfg['n_layer'])
            if model is gpt:
                out = gpt.body(idx, pos, valid)
                last, kv = gpt.lm_head(out.x[:, -1]), out.kv  # generate()'s own prefill
            else:
                last, kv = bitune.prefill(idx, pos, valid)
            with adapter(gpt, 'causal'):
                expected = decode_with_cat(gpt, last, kv, valid, pos[:, -1:], 12)
            assert torch.equal(torch.stack(seen), expected)


def test_generate_stops_rows_at_the_stop_token(tiny_gpt):
    model = tiny_gpt()
    idx = torch.randint(1, 23, (4, 5))
    free = model.generate(idx, 6, temperature=0)
    stop = int(free[0, 6])  # the token row 0 emits second: make it the stop token
    out = model.generate(idx, 6, temperature=0, stop_token=stop)
    for row_free, row in zip(free[:, 5:].tolist(), out[:, 5:].tolist()):
        if stop in row_free:
            k = row_free.index(stop)
            assert row[:k + 1] == row_free[:k + 1] and all(t == stop for t in row[k:])
        else:
            assert row == row_free


def test_generate_sampling_is_seeded_and_leaves_the_global_rng_alone(tiny_gpt):
    model = tiny_gpt()
    idx = torch.randint(1, 23, (2, 4))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = model.generate(idx, 10, temperature=1.0, top_k=5,
                       generator=torch.Generator().manual_seed(7))
    assert torch.equal(before, torch.get_rng_state())
    b = model.generate(idx, 10, temperature=1.0, top_k=5,
                       generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_bad_inputs_raise_clear_errors(tiny_gpt):
    model = tiny_gpt()
    with pytest.raises(ValueError, match='block_size'):
        model.generate(torch.zeros(1, 60, dtype=torch.long), 10)
    with pytest.raises(ValueError, match='block_size'):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match='left-padded'):
        model.generate(torch.zeros(1, 4, dtype=torch.long), 2,
                       valid=torch.tensor([[True, True, True, False]]))
    with pytest.raises(ValueError, match="'causal' or 'bidir'"):
        model(torch.zeros(1, 4, dtype=torch.long), attn='full')
    with pytest.raises(ValueError, match='layer 2: a 2-block model'):
        model.body(torch.zeros(1, 4, dtype=torch.long)).at(2)
    with pytest.raises(ValueError, match='position 66 is past block_size 64'):  # positions given
        model.body(torch.zeros(1, 4, dtype=torch.long), pos=torch.arange(60, 64)[None] + 3)


def test_body_returns_the_state_the_logits_come_from_and_every_block(tiny_gpt):
    model = tiny_gpt()
    idx = torch.randint(0, 23, (2, 6))
    logits, _ = model(idx)
    out = model.body(idx)
    assert torch.allclose(model.lm_head(out.at(-1)), logits, atol=1e-6) and out.at(-1) is out.x
    assert (len(out.hidden) == 2 and out.at(0).shape == (2, 6, 32)
            and not torch.allclose(out.at(0), out.x))
    # the last block's raw output is the final state before ln_f
    assert torch.allclose(model.transformer.ln_f(out.hidden[1]), out.x)
    # counting back from the final state (BAI's default pivots, -2): the block before the last, here
    # block 0 of 2, not the last block's raw output (block 1)
    assert out.at(-2) is out.hidden[0] and not torch.allclose(out.at(-2), out.at(1))
    with pytest.raises(ValueError, match='-2..-2'):
        out.at(-3)
    # BAI's default, -2
    with pytest.raises(ValueError, match='1-block model has -1 .after ln_f., blocks 0..0'):
        tiny_gpt(n_layer=1).body(idx).at(-2)


# ----------------------------------------------------------------------------- LoRA

def test_fresh_adapter_changes_nothing_and_keeps_checkpoint_keys(tiny_gpt):
    model = tiny_gpt()
    idx = torch.randint(0, 23, (2, 6))
    before, _ = model(idx)
    keys_before = set(model.state_dict())
    add_adapters(model, names=('causal', 'bidir'), r=4, alpha=4)
    set_adapter(model, 'causal')
    after, _ = model(idx)
    assert torch.equal(before, after)
    added = set(model.state_dict()) - keys_before
    assert keys_before <= set(model.state_dict())  # LoRA only adds keys
    assert ('transformer.h.0.attn.c_attn.lora_A.causal' in added
            and 'transformer.h.1.mlp.c_fc.lora_B.bidir' in added)
    assert not any('wte' in k or 'lm_head' in k for k in added)
    layer = model.transformer.h[0].attn.c_attn
    assert layer.lora_A['causal'].shape == (4, 32) and layer.lora_B['causal'].shape == (96, 4)
    assert layer.lora_A['causal'].abs().sum() > 0  # A is random, B is zero


def test_switching_adapters_changes_outputs_and_context_restores(tiny_gpt):
    model = add_adapters(tiny_gpt(), names=('causal', 'bidir'))
    randomize_adapters(model)
    idx = torch.randint(0, 23, (2, 6))
    set_adapter(model, 'causal')
    a, _ = model(idx)
    with adapter(model, 'bidir'):
        b, _ = model(idx)
    with adapter(model, None):
        base, _ = model(idx)
    a2, _ = model(idx)
    assert not torch.allclose(a, b, atol=1e-4) and not torch.allclose(a, base, atol=1e-4)
    assert torch.equal(a, a2)  # the context manager restored 'causal'
    with pytest.raises(ValueError, match='no adapter named'):
        set_adapter(model, 'typo')


def test_merge_equals_unmerged_and_unmerge_restores(tiny_gpt):
    model = add_adapters(tiny_gpt(), names=('causal', 'bidir'))
    randomize_adapters(model)
    set_adapter(model, 'causal')
    idx = torch.randint(0, 23, (2, 6))
    unmerged, _ = model(idx)
    w0 = model.transformer.h[0].attn.c_attn.weight.clone()
    for m in model.modules():
        if isinstance(m, AdaptedLinear):
            m.merge('causal')
    merged, _ = model(idx)
    assert torch.allclose(merged, unmerged, atol=1e-5)
    assert not torch.allclose(model.transformer.h[0].attn.c_attn.weight, w0)
    with pytest.raises(RuntimeError, match='unmerge'):
        with adapter(model, 'bidir'):
            model(idx)
    for m in model.modules():
        if isinstance(m, AdaptedLinear):
            m.unmerge()
    assert torch.allclose(model.transformer.h[0].attn.c_attn.weight, w0, atol=1e-6)


def test_lora_on_a_trainable_weight_gives_the_side_path_numbers_and_gradients():
    """With W trainable, AdaptedLinear forms W + scale * B A inside autograd (one matmul); with W
    frozen it adds scale * B A x on the side. Both must be W x + b + scale * B A x, with the same
    adapter gradients."""
    torch.manual_seed(0)
    layer = AdaptedLinear(6, 5)
    layer.add_adapter('a', r=2, alpha=6)   # scale 3: a missing or doubled scale would show
    torch.nn.init.normal_(layer.lora_B['a'])
    layer.active = 'a'
    x, g = torch.randn(3, 4, 6), torch.randn(3, 4, 5)
    A, B = layer.lora_A['a'], layer.lora_B['a']
    written_out = x @ layer.weight.t() + layer.bias + 3.0 * (x @ A.t() @ B.t())
    results = {}
    for trainable in (True, False):
        layer.weight.requires_grad_(trainable)
        layer.zero_grad(set_to_none=True)
        y = layer(x)
        (y * g).sum().backward()
        results[trainable] = (y.detach(), A.grad.clone(), B.grad.clone(), layer.bias.grad.clone())
        assert torch.allclose(y, written_out, atol=1e-5)
        assert (layer.weight.grad is not None) == trainable
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(results[True], results[False]))
    layer.weight.requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    (layer(x) * g).sum().backward()
    # dW = g^T x
    assert torch.allclose(layer.weight.grad, g.reshape(-1, 5).t() @ x.reshape(-1, 6), atol=1e-5)


def test_both_adapters_get_gradients_and_the_base_none(tiny_gpt):
    model = add_adapters(tiny_gpt(), names=('causal', 'bidir'))
    randomize_adapters(model)
    mark_only_adapters_trainable(model)
    idx = torch.randint(0, 23, (2, 6))
    with adapter(model, 'bidir'):
        la, _ = model(idx, attn='bidir')
    with adapter(model, 'causal'):
        lb, _ = model(idx)
    (la.square().mean() + lb.square().mean()).backward()
    for n, p in model.named_parameters():
        if 'lora_' in n:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None, n
    trainable, total = count_params(model)
    assert (trainable == sum(p.numel() for n, p in model.named_parameters() if 'lora_' in n)
            and total > trainable)


def test_adapter_only_state_dict_round_trips(tiny_gpt, tmp_path):
    model = add_adapters(tiny_gpt(), names=('causal', 'bidir'), targets=('c_attn',))
    randomize_adapters(model)
    sd = adapter_state_dict(model)
    assert set(sd) and all('lora_' in k for k in sd)
    torch.save(sd, tmp_path / 'lora.pt')
    other = add_adapters(tiny_gpt(), names=('causal', 'bidir'), targets=('c_attn',))
    load_adapter_state_dict(other, torch.load(tmp_path / 'lora.pt', weights_only=True))
    idx = torch.randint(0, 23, (1, 5))
    for name in ('causal', 'bidir'):
        set_adapter(model, name), set_adapter(other, name)
        assert torch.equal(model(idx)[0], other(idx)[0])
    with pytest.raises(ValueError, match='does not match'):
        load_adapter_state_dict(add_adapters(tiny_gpt(), names=('causal',)), sd)


def test_optimizer_groups_put_adapters_apart_without_decay(tiny_gpt):
    model = add_adapters(tiny_gpt(), names=('causal',))
    opt = configure_optimizers(model, 0.1, 1e-3, (0.9, 0.99), 'cpu')
    decay, no_decay, adapters = opt.param_groups
    assert (decay['weight_decay'] == 0.1 and no_decay['weight_decay'] == 0.0
            and adapters['weight_decay'] == 0.0)
    assert sum(p.numel() for p in adapters['params']) == sum(
        p.numel() for n, p in model.named_parameters() if 'lora_' in n)
    mark_only_adapters_trainable(model)
    opt = configure_optimizers(model, 0.1, 1e-3, (0.9, 0.99), 'cpu')
    assert len(opt.param_groups) == 1  # only the adapters are left to train


def test_forward_is_body_then_head(tiny_gpt):
    model = tiny_gpt()
    idx = torch.randint(0, 23, (2, 6))
    targets = torch.randint(0, 23, (2, 6))
    logits, loss = model(idx, targets)
    out = model.body(idx)
    assert (torch.equal(logits, model.lm_head(out.x))
            and torch.equal(loss, model.head(out.x, targets)[1]))
    assert model(idx)[1] is None and logits.shape == (2, 6, 23)


def test_answer_loss_is_the_same_loss_and_gradient(tiny_gpt):
    """answer_loss runs lm_head on the scored positions only; the loss and every gradient must
    match the full-logits loss (a wrong mask or a dropped -1 would not)."""
    model = tiny_gpt()
    idx = torch.randint(0, 23, (3, 8))
    targets = torch.randint(0, 23, (3, 8))
    targets[0, :5] = -1   # a prompt
    targets[1, 6:] = -1   # padding
    targets[2, ::2] = -1
    losses, grads = [], []
    for full in (True, False):
        model.zero_grad()
        loss = model(idx, targets)[1] if full else model.answer_loss(model.body(idx).x, targets)
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    assert torch.allclose(losses[0], losses[1], atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))
    manual = F.cross_entropy(model(idx)[0][targets != -1], targets[targets != -1])
    assert torch.allclose(losses[1], manual, atol=1e-6)
