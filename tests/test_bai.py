"""bai.py: baseline equivalence at weight 0, no leak, length equalization, schedules, gradients,
losses."""
import math

import pytest
import torch

import bai
from model import count_params

# prompts use tokens 1..10, answers 11..22 (the end token is 22), padding is 0: so a wte row
# of an answer token is reached only through the target path D, never through the input of a pivot
LENGTHS = [(7, 2), (3, 6), (5, 4)]  # (prompt, answer); the longest answer has the shortest prompt


def make_examples(seed=0, lengths=LENGTHS):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(1, 11, (p,), generator=g).tolist(),
             torch.randint(11, 22, (a - 1,), generator=g).tolist() + [22]) for p, a in lengths]


def make_batch(examples, full=False):
    """The training layout, right-padded. full=False: idx[i] = x[:N_i-1] (the last token is never
    an input); full=True: idx[i] = x (tasks.collate keeps it). targets[i, P_i-1+j] = answer_i[j]."""
    B, N = len(examples), [len(p) + len(a) for p, a in examples]
    T = max(N) - (0 if full else 1)
    idx, targets = torch.zeros(B, T, dtype=torch.long), torch.full((B, T), -1, dtype=torch.long)
    valid = torch.zeros(B, T, dtype=torch.bool)
    for i, (p, a) in enumerate(examples):
        x, n = p + a, N[i] - (0 if full else 1)
        idx[i, :n], valid[i, :n] = torch.tensor(x[:n]), True
        targets[i, len(p) - 1:len(p) - 1 + len(a)] = torch.tensor(a)
    return {'idx': idx, 'targets': targets, 'valid': valid, 'pos': torch.arange(T).repeat(B, 1),
            'prompt_len': torch.tensor([len(p) for p, _ in examples]),
            'answer_len': torch.tensor([len(a) for _, a in examples])}


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# ----------------------------------------------------------------------- lambda = 0 is the baseline

@pytest.mark.parametrize('layout', ['drop_last', 'tasks.collate'])
def test_weight_zero_is_the_baseline_bit_for_bit(tiny_gpt, layout):
    if layout == 'tasks.collate':  # the real batches keep x whole; both layouts must work
        from data import tasks
        batch = tasks.collate([{'prompt': p, 'answer': a} for p, a in make_examples()])
        assert all(torch.equal(v, make_batch(make_examples(), full=True)[k])
                   for k, v in batch.items())
    else:
        batch = make_batch(make_examples())
    model = tiny_gpt()
    ref = model.answer_loss(model.body(batch['idx']).x, batch['targets'])  # train.py's causal call
    ref.backward()
    ref_grads = grads(model)
    model.zero_grad(set_to_none=True)
    total, ce, l_bai = bai.compute_loss(model, batch, weight=0.0)
    total.backward()
    assert l_bai is None and torch.equal(total, ref) and torch.equal(ce, ref)
    got = grads(model)
    assert got.keys() == ref_grads.keys() and all(torch.equal(got[n], ref_grads[n]) for n in got)
    # with BAI on, the CE part is still the very same number, and total = CE + weight * L_BAI
    total, ce, l_bai = bai.compute_loss(model, batch, weight=0.3)
    assert torch.equal(ce, ref) and torch.allclose(total, ce + 0.3 * l_bai) and l_bai > 0


# ----------------------------------------------------------------------------- no leak, padding

@pytest.mark.parametrize('layer', [-1, 0])
def test_pivots_from_prompt_plus_answer_equal_pivots_from_the_prompt_alone(tiny_gpt, layer):
    model = tiny_gpt()
    examples = make_examples()
    batch = make_batch(examples)
    out = model.body(batch['idx'], batch['pos'], batch['valid'])
    E, pivot_valid = bai.pivots(out.at(layer), batch)
    assert E.shape == (3, 7, 32) and pivot_valid.sum(1).tolist() == [7, 3, 5]
    for i, (p, _) in enumerate(examples):
        alone = model.body(torch.tensor([p])).at(layer)
        assert torch.allclose(E[i, :len(p)], alone[0], atol=1e-5)


def test_padding_gets_no_weight_and_changing_it_changes_nothing(tiny_gpt):
    model = tiny_gpt()
    batch = make_batch(make_examples())
    E, pivot_valid = bai.pivots(model.body(batch['idx'], batch['pos'], batch['valid']).x, batch)
    tokens, answer_valid = bai.answer_tokens(batch)
    assert answer_valid.sum(1).tolist() == [2, 6, 4]
    assert all(tokens[i, :a].tolist() == ex[1]
               for i, (ex, a) in enumerate(zip(make_examples(), [2, 6, 4])))
    _, S = bai.equalize(model.transformer.wte(tokens), E, pivot_valid)
    # exactly zero attention to padding pivots
    assert torch.all(S.masked_select(~pivot_valid[:, None, :]) == 0)
    assert torch.allclose(S.sum(-1), torch.ones(3, 6))
    # padding tokens of idx (and so the padding pivots, on other rows' answers) change nothing
    _, _, l_bai = bai.compute_loss(model, batch, weight=1.0)
    noisy = dict(batch, idx=batch['idx'].masked_fill(~batch['valid'], 5))
    _, _, l_noisy = bai.compute_loss(model, noisy, weight=1.0)
    assert torch.allclose(l_bai, l_noisy, atol=1e-6)
    # garbage at padded answer positions of E_hat and D, even NaN, changes nothing either
    D, E_hat = torch.randn(3, 6, 32), torch.randn(3, 6, 32)
    for kind in bai.KINDS:
        ref = bai.awareness_loss(E_hat, D, tokens, answer_valid, kind, model.lm_head)
        pad = ~answer_valid[..., None]
        got = bai.awareness_loss(E_hat.masked_fill(pad, float('nan')), D.masked_fill(pad, 7.0),
                                 tokens, answer_valid, kind, model.lm_head)
        assert torch.equal(ref, got)


# ----------------------------------------------------------------------------- length equalization

def test_equalize_has_the_answers_length_and_matches_a_hand_example():
    # E = the 2x2 identity (2 pivots, d = 2); D row 0 = [sqrt(2) ln 3, 0], D row 1 = [0, 0].
    # scores = D E^T / sqrt(2): row 0 = [ln 3, 0] -> softmax [3/4, 1/4];
    #                           row 1 = [0, 0] -> [1/2, 1/2].
    # E_hat = S E = S (E is the identity) = [[0.75, 0.25], [0.5, 0.5]].
    E = torch.eye(2)[None]
    D = torch.tensor([[[math.sqrt(2) * math.log(3), 0.0], [0.0, 0.0]]])
    want = torch.tensor([[[0.75, 0.25], [0.5, 0.5]]])
    E_hat, S = bai.equalize(D, E, torch.ones(1, 2, dtype=torch.bool))
    assert torch.allclose(E_hat, want) and torch.allclose(S, want)
    # a third, padded pivot with huge values changes nothing
    E3 = torch.cat([E, torch.full((1, 1, 2), 1e4)], dim=1)
    E_hat3, S3 = bai.equalize(D, E3, torch.tensor([[True, True, False]]))
    assert torch.allclose(E_hat3, want) and S3[0, :, 2].tolist() == [0.0, 0.0]
    # 5 pivots, 3 answer tokens -> 3 rows
    E_hat, S = bai.equalize(torch.randn(2, 3, 8), torch.randn(2, 5, 8),
                            torch.ones(2, 5, dtype=torch.bool))
    assert E_hat.shape == (2, 3, 8) and S.shape == (2, 3, 5)
    with pytest.raises(ValueError, match='no valid pivot'):
        bai.equalize(D, E, torch.tensor([[False, False]]))


# ----------------------------------------------------------------------------- schedule, errors

def test_schedule_values_and_errors(tiny_gpt):
    assert bai.schedule(0) == 1.0 and bai.schedule(12345) == 1.0
    assert [bai.schedule(t, 'linear', max_iters=100) for t in (0, 25, 100, 150)] == [
        1.0, 0.75, 0.0, 0.0]
    assert bai.schedule(0, 'exp', eta=2.0) == 2.0
    assert math.isclose(bai.schedule(1000, 'exp', eta=2.0, gamma=0.5, phi=1000), 1.0)
    assert math.isclose(bai.schedule(3000, 'exp', eta=1.0, gamma=0.5, phi=1000), 0.125)
    with pytest.raises(ValueError, match='unknown BAI schedule'):
        bai.schedule(0, 'cosine')
    with pytest.raises(ValueError, match='max_iters'):
        bai.schedule(0, 'linear')
    with pytest.raises(ValueError, match='unknown BAI loss kind'):
        bai.compute_loss(tiny_gpt(), make_batch(make_examples()), weight=1.0, kind='l1')


# -------------------------------------------------------------------------- where the gradient goes

def test_awareness_gradient_reaches_only_the_layers_below_the_pivots(tiny_gpt):
    model = tiny_gpt()
    batch = make_batch(make_examples())
    _, _, l_bai = bai.compute_loss(model, batch, weight=1.0, layer=0)
    l_bai.backward()
    g = grads(model)
    assert all(g[n].abs().sum() > 0
               for n, _ in model.transformer.h[0].named_parameters(prefix='transformer.h.0'))
    assert not any(n.startswith(('transformer.h.1.', 'transformer.ln_f.')) for n in g)
    model.zero_grad(set_to_none=True)
    bai.compute_loss(model, batch, weight=1.0, layer=-1)[2].backward()
    assert grads(model)['transformer.h.1.mlp.c_fc.weight'].abs().sum() > 0


@pytest.mark.parametrize('kind', ['mse', 'cosine'])
def test_wte_gets_the_target_path_gradient_only_when_not_detached(tiny_gpt, kind):
    # wte is also the input embedding (and, tied, lm_head), so look at the rows of answer-only
    # tokens: no prompt reads them, so their gradient can only come through D
    model = tiny_gpt()
    batch = make_batch(make_examples())
    answer_rows = list(range(11, 23))
    for detach in (True, False):
        model.zero_grad(set_to_none=True)
        bai.compute_loss(model, batch, weight=1.0, kind=kind, detach_target=detach)[2].backward()
        g = model.transformer.wte.weight.grad
        assert g[1:11].abs().sum() > 0  # prompt tokens: through the pivots, either way
        assert (g[answer_rows].abs().sum() > 0) == (not detach)


# --------------------------------------------------------------------------- inference is untouched

def test_bai_adds_no_parameters_and_leaves_generation_unchanged(tiny_gpt):
    model, twin = tiny_gpt(seed=3), tiny_gpt(seed=3)
    before, keys = count_params(model), list(model.state_dict())
    total, _, _ = bai.compute_loss(model, make_batch(make_examples()), weight=1.0, kind='ce')
    total.backward()
    assert count_params(model) == before and list(model.state_dict()) == keys
    assert not model._forward_hooks and not model._forward_pre_hooks
    prompts = torch.randint(1, 11, (2, 5))
    assert torch.equal(model.generate(prompts, 6, temperature=0),
                       twin.generate(prompts, 6, temperature=0))


# --------------------------------------------------------------------------- every loss kind trains

@pytest.mark.parametrize('kind', bai.KINDS)
def test_each_loss_kind_is_finite_nonnegative_and_decreases(tiny_gpt, kind):
    model = tiny_gpt().train()
    batch = make_batch(make_examples())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    history = []
    for _ in range(15):
        _, _, l_bai = bai.compute_loss(model, batch, weight=1.0, kind=kind)
        assert torch.isfinite(l_bai) and l_bai >= 0
        history.append(l_bai.item())
        opt.zero_grad(set_to_none=True)
        l_bai.backward()  # the awareness loss alone, so its own decrease is what we see
        opt.step()
    assert history[-1] < 0.9 * history[0], history


def test_awareness_from_other_pivots_matches_and_checks_empty_prefixes(tiny_gpt):
    # the Bitune + BAI path passes its own pivots; the same pivots must give the same loss
    model = tiny_gpt()
    batch = make_batch(make_examples())
    E, pivot_valid = bai.pivots(model.body(batch['idx'], batch['pos'], batch['valid']).at(-2),
                                batch)
    _, _, l_bai = bai.compute_loss(model, batch, weight=1.0)
    assert torch.equal(bai.awareness_from_pivots(E, pivot_valid, batch, model), l_bai)
    empty = pivot_valid.clone()
    empty[1] = False  # e.g. a 1-token prompt has an empty Bitune prefix
    with pytest.raises(ValueError, match='no valid pivot'):
        bai.awareness_from_pivots(E, empty, batch, model)


# ------------------------------------------------------------------ Bitune + BAI (train.batch_loss)

def bitune_bai_loss(tiny_gpt, batch, **settings):
    """train.batch_loss of method 'bitune_bai' on a tiny LoRA Bitune (the same weights every
    call)."""
    from types import SimpleNamespace
    import train
    from bitune import Bitune
    from helpers import randomize_adapters
    from adapters import add_adapters
    gpt = add_adapters(tiny_gpt(), names=('causal', 'bidir'), r=4, alpha=4)
    randomize_adapters(gpt)
    c = SimpleNamespace(**{**train.DEFAULTS, 'method': 'bitune_bai', **settings})
    with torch.no_grad():
        total, numbers = train.batch_loss(Bitune(gpt), gpt, batch, c, 1.0)
    return total, numbers, gpt


def pivots_the_long_way(gpt, batch, adapter_name, attn, layer):
    """The prefix (the prompt minus its last token) read by one pass, at one layer, by GPT.body."""
    from adapters import adapter
    P = batch['prompt_len']
    Tp = int(P.max()) - 1
    valid = torch.arange(Tp)[None] < (P - 1)[:, None]
    with torch.no_grad(), adapter(gpt, adapter_name):
        out = gpt.body(batch['idx'][:, :Tp], batch['pos'][:, :Tp], valid, attn=attn)
    return out.at(layer), valid


@pytest.mark.parametrize('settings, adapter_name, attn, layer', [
    ({}, 'bidir', 'bidir', 0),                     # the default: Pass A, the block before the last
                                                   # (0 of 2)
    ({'bai_layer': -1}, 'bidir', 'bidir', -1),     # Pass A after ln_f
    ({'bai_pivots': 'B'}, 'causal', 'causal', 0),  # Pass B: causal mask, causal adapter
    ({'bai_pivots': 'B', 'bai_layer': -1, 'bai_loss': 'cosine'}, 'causal', 'causal', -1),
])
def test_bitune_bai_takes_its_pivots_from_the_chosen_pass_and_layer(tiny_gpt, settings,
                                                                    adapter_name, attn, layer):
    batch = make_batch(make_examples())
    total, numbers, gpt = bitune_bai_loss(tiny_gpt, batch, **settings)
    E, valid = pivots_the_long_way(gpt, batch, adapter_name, attn, layer)
    with torch.no_grad():
        want = bai.awareness_from_pivots(E, valid, batch, gpt, kind=settings.get('bai_loss', 'mse'))
    # exactly: the default ({}) is the same loss as before the switches
    assert numbers['bai_loss'] == want.item()
    assert total.item() == pytest.approx(numbers['ce_loss'] + want.item(), abs=1e-6)
    if settings:  # each switch changes the pivots, and so the loss
        assert abs(total.item() - bitune_bai_loss(tiny_gpt, batch)[0].item()) > 1e-4

