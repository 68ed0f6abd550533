"""bitune.py: which pass sees what, the mixing invariants, batching, gradients, cached generation,
variants."""
import pytest
import torch
import torch.nn.functional as F

from bitune import VARIANTS, Bitune
from helpers import randomize_adapters
from adapters import add_adapters, mark_only_adapters_trainable
from model import configure_optimizers

V = 23  # the tiny_gpt vocabulary



def lora_bitune(tiny_gpt, variant='full', thetas=None):
    gpt = add_adapters(tiny_gpt(), names=('causal', 'bidir'), r=4, alpha=4)
    randomize_adapters(gpt)
    bt = Bitune(gpt, variant=variant)
    if thetas is not None and hasattr(bt, 'mix_theta_k'):
        with torch.no_grad():
            bt.mix_theta_k.copy_(torch.tensor(thetas[0]))
            bt.mix_theta_v.copy_(torch.tensor(thetas[1]))
    return bt


def make_batch(examples, full=False, pad=0):
    """(prompt, answer) lists -> the training layout, right-padded: idx = x[:N-1] (or all of x with
    full=True, as tasks.collate does), targets[t] = x[t+1] for t >= P-1 and -1 elsewhere."""
    xs = [p + a for p, a in examples]
    T = max(len(x) for x in xs) - (0 if full else 1)
    B = len(xs)
    idx = torch.full((B, T), pad, dtype=torch.long)
    targets = torch.full((B, T), -1, dtype=torch.long)
    valid = torch.zeros(B, T, dtype=torch.bool)
    for i, ((p, a), x) in enumerate(zip(examples, xs)):
        n = len(x) if full else len(x) - 1
        idx[i, :n], valid[i, :n] = torch.tensor(x[:n]), True
        targets[i, len(p) - 1:len(x) - 1] = torch.tensor(x[len(p):])
    return {'idx': idx, 'targets': targets, 'valid': valid, 'pos': torch.arange(T).repeat(B, 1),
            'prompt_len': torch.tensor([len(p) for p, _ in examples]),
            'answer_len': torch.tensor([len(a) for _, a in examples])}


def rand_examples(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(1, V, (p,), generator=g).tolist(),
             torch.randint(1, V, (a,), generator=g).tolist())
            for p, a in lengths]


LENGTHS = [(3, 5), (7, 2), (5, 4)]  # different prompt and answer lengths in one batch
THETAS = ([0.03, -0.002], [0.005, 0.2])  # alphas far from 0.5 and different per layer


def baseline_answer_logits(bt, batch):
    """Plain causal GPT over the whole sequence with the causal adapter, at the answer positions."""
    with torch.no_grad():
        from adapters import adapter
        with adapter(bt.gpt, 'causal'):
            logits, loss = bt.gpt(batch['idx'], batch['targets'], valid=batch['valid'])
    rows = [logits[i, p - 1:p - 1 + a]
            for i, (p, a) in enumerate(zip(batch['prompt_len'].tolist(),
                                           batch['answer_len'].tolist()))]
    return rows, loss


def answer_rows(aux, batch):
    return [aux['logits'][i, :a] for i, a in enumerate(batch['answer_len'].tolist())]


# ----------------------------------------------------------------------------- what each pass sees

def test_pass_a_is_bidirectional_pass_b_causal_and_neither_sees_padding(tiny_gpt):
    bt = lora_bitune(tiny_gpt)
    prefix = torch.randint(1, V, (2, 6))
    pos = torch.arange(6).repeat(2, 1)
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[1, 4:] = False  # row 1: 4 real prefix tokens
    changed = prefix.clone()
    changed[1, 3] = (changed[1, 3] + 1) % V  # row 1's last real prefix token
    kv_a, h = bt.pass_a(prefix, pos, valid)
    kv_a2, h2 = bt.pass_a(changed, pos, valid)
    # K at position 0 changed
    assert not torch.allclose(kv_a[1][0][1, :, 0], kv_a2[1][0][1, :, 0], atol=1e-5)
    assert not torch.allclose(h[1, 0], h2[1, 0], atol=1e-5)
    kv_b, kv_b2 = bt.pass_b(prefix, pos, valid)[0], bt.pass_b(changed, pos, valid)[0]
    for layer in range(2):
        for j in range(2):  # K and V
            assert torch.allclose(kv_b[layer][j][1, :, :3], kv_b2[layer][j][1, :, :3], atol=1e-6)
    assert not torch.allclose(kv_b[1][0][1, :, 3], kv_b2[1][0][1, :, 3], atol=1e-5)
    padded = prefix.clone()
    padded[1, 4:] = (padded[1, 4:] + 5) % V
    for run in (bt.pass_a, bt.pass_b):
        (kv, _), (kv2, _) = run(prefix, pos, valid), run(padded, pos, valid)
        assert torch.allclose(kv[1][1][1, :, :4], kv2[1][1][1, :, :4], atol=1e-6)


def test_answer_never_sees_its_future_nor_padding(tiny_gpt):
    bt = lora_bitune(tiny_gpt, thetas=THETAS)
    ex = rand_examples(LENGTHS)
    batch = make_batch(ex)
    loss, aux = bt(batch)
    # row 0 has the shortest prompt: its right-padded prefix region holds its own answer tokens,
    # which Pass A must not see. Change answer token t+1 = 3 of row 0 (column P + 3).
    changed = {k: v.clone() for k, v in batch.items()}
    changed['idx'][0, 3 + 3] = (changed['idx'][0, 3 + 3] + 1) % V
    _, aux2 = bt(changed)
    # Pass C rows 0..3 read x[..P+2]
    assert torch.allclose(aux['logits'][0, :4], aux2['logits'][0, :4], atol=1e-6)
    assert not torch.allclose(aux['logits'][0, 4], aux2['logits'][0, 4], atol=1e-5)
    # padding tokens change no real output and not the loss
    padded = {k: v.clone() for k, v in batch.items()}
    padded['idx'][~batch['valid']] = 7
    loss3, aux3 = bt(padded)
    assert torch.allclose(loss, loss3, atol=1e-6)
    for a, b in zip(answer_rows(aux, batch), answer_rows(aux3, batch)):
        assert torch.allclose(a, b, atol=1e-6)


# ----------------------------------------------------------------------------- invariants

def test_alpha_zero_gives_the_causal_baseline(tiny_gpt):
    bt = lora_bitune(tiny_gpt, thetas=([0.0, 0.0], [0.0, 0.0]))
    assert bt.alphas() == {'alpha_k': [0.0, 0.0], 'alpha_v': [0.0, 0.0]}
    batch = make_batch(rand_examples(LENGTHS))
    loss, aux = bt(batch)
    rows, base_loss = baseline_answer_logits(bt, batch)
    for a, b in zip(answer_rows(aux, batch), rows):
        assert torch.allclose(a, b, atol=1e-5)
    # the same token-weighted loss as the baseline
    assert torch.allclose(loss, base_loss, atol=1e-5)


def test_only_causal_with_identical_adapters_changes_nothing(tiny_gpt):
    bt = lora_bitune(tiny_gpt, 'only_causal', thetas=THETAS)
    with torch.no_grad():
        for n, p in bt.gpt.named_parameters():
            if n.endswith('.bidir'):
                p.copy_(bt.gpt.get_parameter(n[:-len('bidir')] + 'causal'))
    batch = make_batch(rand_examples(LENGTHS))
    loss, aux = bt(batch)
    rows, base_loss = baseline_answer_logits(bt, batch)
    for a, b in zip(answer_rows(aux, batch), rows):
        assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(loss, base_loss, atol=1e-5)


def test_fixed_mixing_has_no_trainable_thetas(tiny_gpt):
    bt = lora_bitune(tiny_gpt, 'fixed')
    assert not any('mix_' in n for n, _ in bt.named_parameters())
    assert bt.alphas() == {'alpha_k': [0.5, 0.5], 'alpha_v': [0.5, 0.5]}
    # at init theta = theta_init, so alpha = 0.5 too: same outputs
    full = lora_bitune(tiny_gpt, 'full')
    assert full.alphas() == bt.alphas()
    batch = make_batch(rand_examples(LENGTHS))
    assert torch.allclose(bt(batch)[0], full(batch)[0], atol=1e-6)


def test_naive_and_shared_never_use_the_bidir_adapter(tiny_gpt):
    batch = make_batch(rand_examples(LENGTHS))
    for variant in ('naive', 'shared'):
        bt = lora_bitune(tiny_gpt, variant)
        loss, _ = bt(batch)
        randomize_adapters(bt.gpt, seed=5)  # new values for both adapters ...
        with torch.no_grad():
            for n, p in lora_bitune(tiny_gpt, variant).gpt.named_parameters():
                if n.endswith('.causal'):  # ... then the causal one put back
                    bt.gpt.get_parameter(n).copy_(p)
        assert torch.allclose(bt(batch)[0], loss, atol=1e-6), variant


# ----------------------------------------------------------------------------- batching

def test_padded_batch_equals_each_example_alone(tiny_gpt):
    bt = lora_bitune(tiny_gpt, thetas=THETAS)
    ex = rand_examples(LENGTHS)
    batch = make_batch(ex)
    loss, aux = bt(batch)
    total = 0.0
    for i, e in enumerate(ex):
        alone, _ = bt(make_batch([e]))
        a = batch['answer_len'][i]
        mine = F.cross_entropy(aux['logits'][i, :a], aux['targets'][i, :a])
        assert torch.allclose(mine, alone, atol=1e-5)
        total = total + mine * a
    assert torch.allclose(loss, total / batch['answer_len'].sum(), atol=1e-5)  # token-weighted
    assert (aux['targets'][~aux['answer_valid']] == -1).all()
    assert (aux['bidir_hidden'].shape == (3, 6, 32)
            and aux['prefix_valid'].sum(1).tolist() == [2, 6, 4])


def test_both_batch_layouts_give_the_same_loss(tiny_gpt):
    """idx = x[:N-1] or all of x (tasks.collate): Pass C reads the same columns."""
    bt = lora_bitune(tiny_gpt, thetas=THETAS)
    ex = rand_examples(LENGTHS)
    assert torch.allclose(bt(make_batch(ex))[0], bt(make_batch(ex, full=True))[0], atol=1e-6)


# ----------------------------------------------------------------------------- gradients

def test_lora_gradients_reach_both_adapters_and_every_theta_not_the_base(tiny_gpt):
    bt = lora_bitune(tiny_gpt, thetas=THETAS)
    mark_only_adapters_trainable(bt.gpt)
    loss, _ = bt(make_batch(rand_examples(LENGTHS)))
    loss.backward()
    # only Pass A's K/V are read, so the bidir adapter's last-block attention output and MLP
    # cannot matter
    unused = ('h.1.attn.c_proj', 'h.1.mlp.c_fc', 'h.1.mlp.c_proj')
    for n, p in bt.named_parameters():
        if 'mix_' in n:
            assert p.grad is not None and (p.grad != 0).all(), n  # every layer's theta, K and V
        elif 'lora_' in n and not (n.endswith('.bidir') and any(u in n for u in unused)):
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None, n
    opt = configure_optimizers(bt, 0.1, 1e-3, (0.9, 0.99), 'cpu')
    # adapters + thetas
    assert len(opt.param_groups) == 1 and opt.param_groups[0]['weight_decay'] == 0.0


def test_full_finetuning_trains_the_base_and_the_bidir_adapter(tiny_gpt):
    gpt = add_adapters(tiny_gpt(), names=('bidir',), r=4, alpha=4)
    randomize_adapters(gpt)
    bt = Bitune(gpt, causal_adapter=None)
    loss, _ = bt(make_batch(rand_examples(LENGTHS)))
    loss.backward()
    assert bt.gpt.transformer.h[0].attn.c_attn.weight.grad.abs().sum() > 0
    assert bt.gpt.transformer.h[0].mlp.c_fc.lora_A['bidir'].grad.abs().sum() > 0
    assert bt.mix_theta_k.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="adapter named 'causal'"):
        Bitune(gpt)  # the default expects a 'causal' adapter: a clear message, not a KeyError


# ----------------------------------------------------------------------------- generation

def test_cached_generation_equals_recomputation_through_the_bitune_forward(tiny_gpt):
    bt = lora_bitune(tiny_gpt, thetas=THETAS)
    prompts = [torch.randint(1, V, (n,)).tolist() for n in (3, 7, 5)]
    P, new = 7, 6
    idx = torch.zeros(3, P, dtype=torch.long)
    valid = torch.zeros(3, P, dtype=torch.bool)
    for i, p in enumerate(prompts):  # left padding
        idx[i, P - len(p):], valid[i, P - len(p):] = torch.tensor(p), True
    with torch.no_grad():
        pos = (valid.long().cumsum(1) - 1).clamp(min=0)  # as GPT.generate computes them
        last, kv = bt.prefill(idx, pos, valid)
        _, aux = bt(make_batch([(p, [0]) for p in prompts]))
    # (B, nh, P, hs): the baseline's cache size
    assert len(kv) == 2 and kv[0][0].shape == (3, 2, P, 16)
    # the prefill's logits are Pass C's first
    assert torch.allclose(last, aux['logits'][:, 0], atol=1e-5)
    out = bt.generate(idx, new, temperature=0, valid=valid)
    for i, p in enumerate(prompts):
        seq = []
        with torch.no_grad():
            # the generated tokens so far are the "answer"; the dummy last token is never read
            for _ in range(new):
                _, aux = bt(make_batch([(p, seq + [0])]))
                seq.append(int(aux['logits'][0, -1].argmax()))
        assert out[i, P:].tolist() == seq, i


@pytest.mark.parametrize('variant', list(VARIANTS))
def test_every_variant_trains_and_generates(tiny_gpt, variant):
    bt = lora_bitune(tiny_gpt, variant)
    mark_only_adapters_trainable(bt.gpt)
    loss, aux = bt(make_batch(rand_examples(LENGTHS)))
    loss.backward()
    assert torch.isfinite(loss) and aux['logits'].shape == (3, 5, V)
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for n, p in bt.named_parameters() if '.causal' in n)
    out = bt.generate(torch.randint(1, V, (2, 4)), 3, temperature=0)
    assert out.shape == (2, 7)
    assert len(bt.alphas()['alpha_k']) == 2


def test_bad_inputs_raise_clear_errors(tiny_gpt):
    gpt = add_adapters(tiny_gpt(), names=('causal', 'bidir'))
    with pytest.raises(ValueError,
                       match='choose one of full, naive, no_mixing, only_causal, shared, fixed'):
        Bitune(gpt, variant='bidirectional')
    bt = Bitune(gpt)
    with pytest.raises(ValueError, match='at least 2 tokens'):
        bt(make_batch([([5], [1, 2]), ([4, 5, 6], [3])]))
    with pytest.raises(ValueError, match='at least 2 tokens'):
        bt.generate(torch.tensor([[0, 5], [4, 5]]), 2,
                    valid=torch.tensor([[False, True], [True, True]]))


def test_state_dict_round_trip_keeps_thetas_and_both_adapters(tiny_gpt, tmp_path):
    bt = lora_bitune(tiny_gpt, thetas=THETAS)
    torch.save(bt.state_dict(), tmp_path / 'bitune.pt')
    sd = torch.load(tmp_path / 'bitune.pt', weights_only=True)
    assert {'mix_theta_k', 'mix_theta_v', 'gpt.transformer.h.0.attn.c_attn.lora_A.bidir'} <= set(sd)
    other = Bitune(add_adapters(tiny_gpt(seed=3), names=('causal', 'bidir'), r=4, alpha=4))
    other.load_state_dict(sd)
    batch = make_batch(rand_examples(LENGTHS))
    assert torch.equal(bt(batch)[1]['logits'], other(batch)[1]['logits'])
    assert other.alphas() == bt.alphas()


@pytest.mark.parametrize('variant', ['full', 'shared', 'no_mixing'])
@pytest.mark.parametrize('layer', [-1, 0])
def test_prefix_passes_return_the_hidden_states_gpt_body_gives_at_that_layer(tiny_gpt, variant,
                                                                             layer):
    """What a loss on the prompt's states (BAI's pivots) reads: each prefix pass at hidden_layer,
    with the pass's own mask and adapter, exactly as GPT.body computes them; the answer's loss does
    not change."""
    from adapters import adapter
    bt = lora_bitune(tiny_gpt, variant, thetas=THETAS)
    batch = make_batch(rand_examples(LENGTHS))
    with torch.no_grad():
        loss, aux = bt(batch, hidden_layer=layer)
        Tp = aux['prefix_valid'].size(1)
        prefix, pos = batch['idx'][:, :Tp], batch['pos'][:, :Tp]
        passes = {'bidir_hidden': (bt.a_adapter, bt.a_attn), 'causal_hidden': ('causal', 'causal')}
        for key, (name, attn) in passes.items():
            if key == 'causal_hidden' and not VARIANTS[variant][2]:
                assert aux[key] is None  # no Pass B, no causal reading of the prefix
                continue
            with adapter(bt.gpt, name):
                want = bt.gpt.body(prefix, pos, aux['prefix_valid'], attn=attn).at(layer)
            assert torch.equal(aux[key], want), key
        assert torch.equal(loss, bt(batch)[0])
        if layer != -1:  # an inner layer is not the state after ln_f
            assert not torch.allclose(aux['bidir_hidden'], bt(batch)[1]['bidir_hidden'], atol=1e-3)
