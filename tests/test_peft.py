"""Adapters of every kind (adapters.py): LoRA, DoRA and IA3 as named adapters, alone and under
Bitune."""
import pytest
import torch

import sample
import train
from bitune import Bitune
from data.tasks import collate
from helpers import kill_after_first_checkpoint, randomize_adapters
from adapters import (KINDS, AdaptedLinear, adapted_layers, adapter, adapter_kinds,
                      adapter_state_dict, add_adapters, is_adapter_param, load_adapter_state_dict,
                      mark_only_adapters_trainable, set_adapter)
from utils import checkpoint

MARKERS = {'lora': ('lora_A', 'lora_B'), 'dora': ('lora_A', 'lora_B', 'dora_m'), 'ia3': ('ia3_l',)}


def adapted(tiny_gpt, kind, names=('causal', 'bidir'), randomize=True):
    """A tiny GPT with adapters of one kind; randomize: adapters moved from their start, and biases
    that are not 0 (GPT starts them at 0, which would hide a bias scaled or forgotten)."""
    gpt = add_adapters(tiny_gpt(), names=names, kind=kind, r=4, alpha=8)
    if randomize:
        randomize_adapters(gpt)
        g = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for m in adapted_layers(gpt):
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return gpt


def merge_all(model, name):
    for m in adapted_layers(model):
        if name in m.kind:
            m.merge(name)

# ----------------------------------------------------------------------------- every kind


@pytest.mark.parametrize('kind', KINDS)
def test_a_fresh_adapter_leaves_the_logits_unchanged(tiny_gpt, kind):
    model = tiny_gpt()
    idx = torch.randint(0, 23, (2, 6))
    before, _ = model(idx)
    add_adapters(model, names=('causal', 'bidir'), kind=kind, r=4, alpha=8)
    added = [n for n, _ in model.named_parameters() if is_adapter_param(n)]
    # each kind under its own names
    assert added and all(any(k in n for k in MARKERS[kind]) for n in added)
    for name in ('causal', 'bidir'):
        set_adapter(model, name)
        assert torch.allclose(model(idx)[0], before, atol=1e-6)
    assert adapter_kinds(model) == {'causal': kind, 'bidir': kind}


@pytest.mark.parametrize('kind', KINDS)
def test_switching_named_adapters_changes_outputs(tiny_gpt, kind):
    model = adapted(tiny_gpt, kind)
    idx = torch.randint(0, 23, (2, 6))
    outs = {}
    for name in ('causal', 'bidir', None):
        with adapter(model, name):
            outs[name] = model(idx)[0]
    assert not torch.allclose(outs['causal'], outs['bidir'], atol=1e-4)
    assert not torch.allclose(outs['causal'], outs[None], atol=1e-4)
    assert not torch.allclose(outs['bidir'], outs[None], atol=1e-4)


@pytest.mark.parametrize('kind', KINDS)
def test_merged_equals_unmerged_and_unmerge_restores_exactly(tiny_gpt, kind):
    model = adapted(tiny_gpt, kind)
    set_adapter(model, 'causal')
    idx = torch.randint(0, 23, (2, 6))
    unmerged, _ = model(idx)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    merge_all(model, 'causal')
    merged, _ = model(idx)
    assert torch.allclose(merged, unmerged, atol=1e-5)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert ('transformer.h.0.attn.c_attn.weight' in changed
            and not any(is_adapter_param(k) for k in changed))
    # IA3: output scaling folds into the bias too; attn.c_proj and mlp.c_fc have no IA3
    if kind == 'ia3':
        assert 'transformer.h.0.attn.c_attn.bias' in changed
        assert {k.rsplit('.', 2)[-2] for k in changed} == {'c_attn', 'c_proj'}
        assert ('transformer.h.0.attn.c_proj.weight' not in changed
                and 'transformer.h.0.mlp.c_fc.weight' not in changed)
    with pytest.raises(RuntimeError, match='unmerge'):
        with adapter(model, 'bidir'):
            model(idx)
    for m in adapted_layers(model):
        m.unmerge()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize('kind', KINDS)
def test_both_adapters_and_the_mixing_scalars_get_gradients_in_one_bitune_loss(tiny_gpt, kind):
    gpt = adapted(tiny_gpt, kind)
    mark_only_adapters_trainable(gpt)
    bt = Bitune(gpt)
    g = torch.Generator().manual_seed(0)
    examples = [{'prompt': torch.randint(1, 23, (p,), generator=g).tolist(),
                 'answer': torch.randint(1, 23, (a,), generator=g).tolist()}
                for p, a in [(3, 5), (7, 2), (5, 4)]]
    loss, _ = bt(collate(examples))
    loss.backward()
    # only Pass A's K/V reach the answer, so the bidir adapter's last-block attention output and
    # MLP cannot matter
    unused = ('h.1.attn.c_proj', 'h.1.mlp.c_fc', 'h.1.mlp.c_proj')
    seen = set()
    for n, p in bt.named_parameters():
        if is_adapter_param(n) and not (n.endswith('.bidir') and any(u in n for u in unused)):
            assert p.grad is not None and p.grad.abs().sum() > 0, n
            seen.add(n.rsplit('.', 1)[-1])
        else:
            assert p.grad is None or p.grad.abs().sum() == 0, n
    assert {'causal', 'bidir', 'mix_theta_k', 'mix_theta_v'} <= seen


@pytest.mark.parametrize('kind', KINDS)
def test_adapter_only_state_dict_round_trips(tiny_gpt, kind, tmp_path):
    model = adapted(tiny_gpt, kind)
    sd = adapter_state_dict(model)
    assert sd and all(any(k in n for k in MARKERS[kind]) for n in sd)
    assert not any(n.endswith(('.weight', '.bias')) for n in sd)  # nothing of the base
    torch.save(sd, tmp_path / 'adapters.pt')
    other = adapted(tiny_gpt, kind, randomize=False)  # fresh adapters on the same base
    other.load_state_dict({k: v for k, v in model.state_dict().items() if not is_adapter_param(k)},
                          strict=False)
    load_adapter_state_dict(other, torch.load(tmp_path / 'adapters.pt', weights_only=True))
    idx = torch.randint(0, 23, (1, 5))
    for name in ('causal', 'bidir'):
        set_adapter(model, name), set_adapter(other, name)
        assert torch.equal(model(idx)[0], other(idx)[0])
    with pytest.raises(ValueError, match='does not match'):
        load_adapter_state_dict(adapted(tiny_gpt, 'lora' if kind != 'lora' else 'ia3',
                                        randomize=False), sd)

# ----------------------------------------------------------------------------- DoRA


def test_dora_computes_its_formula_with_the_norm_detached():
    """y = m * (W + s B A) x / ||W + s B A|| + b, the norm per output unit (row of the (out, in)
    weight), and backward treats that norm as a constant (DoRA's section 4.3)."""
    torch.manual_seed(0)
    layer = AdaptedLinear(6, 5)
    # scale 3: a missing or doubled scale would show
    layer.add_adapter('a', kind='dora', r=2, alpha=6)
    with torch.no_grad():
        layer.lora_B['a'].normal_()
        layer.dora_m['a'].mul_(torch.rand(5) + 0.5)
    layer.weight.requires_grad_(False)
    layer.active = 'a'
    x, g = torch.randn(3, 4, 6), torch.randn(3, 4, 5)
    (layer(x) * g).sum().backward()
    W, b = layer.weight, layer.bias.detach()
    for detach in (True, False):
        A, B, m = (p.detach().clone().requires_grad_()
                   for p in (layer.lora_A['a'], layer.lora_B['a'], layer.dora_m['a']))
        V = W + 3.0 * B @ A                                    # (out, in)
        norm = V.norm(dim=1, keepdim=True)                     # (out, 1): one norm per output unit
        y = x @ (m[:, None] * V / (norm.detach() if detach else norm)).t() + b
        (y * g).sum().backward()
        assert torch.allclose(layer(x), y, atol=1e-5)         # the output is the formula either way
        same = [torch.allclose(p.grad, q.grad, atol=1e-5)
                for p, q in ((layer.lora_A['a'], A), (layer.lora_B['a'], B),
                             (layer.dora_m['a'], m))]
        # the norm does not depend on m, so m's gradient is the same either way; A's and B's are not
        assert same == ([True, True, True] if detach else [False, False, True])


def test_dora_starts_at_the_row_norms_and_its_merge_is_m_times_the_normalised_direction(tiny_gpt):
    gpt = add_adapters(tiny_gpt(), names=('causal',), kind='dora', r=4, alpha=8)
    layer = gpt.transformer.h[0].mlp.c_fc
    assert torch.equal(layer.dora_m['causal'], layer.weight.norm(dim=1))
    randomize_adapters(gpt)
    W, m = layer.weight.clone(), layer.dora_m['causal'].detach()
    layer.merge('causal')
    assert torch.allclose(layer.weight.norm(dim=1), m, atol=1e-5)  # merged rows have length m
    layer.unmerge()
    assert torch.equal(layer.weight, W)

# ----------------------------------------------------------------------------- IA3


def test_ia3_scales_exactly_the_keys_values_and_mlp_activation(tiny_gpt):
    gpt = adapted(tiny_gpt, 'ia3', names=('causal',))
    C = gpt.config.n_embd
    places = {n.rsplit('.', 2)[-2] + '.' + n.rsplit('.', 1)[-1] for n, m in gpt.named_modules()
              if isinstance(m, AdaptedLinear) and m.kind}
    assert places == {'attn.c_attn', 'mlp.c_proj'}
    block = gpt.transformer.h[0]
    x, h = torch.randn(2, 5, C), torch.randn(2, 5, 4 * C)
    l_kv, l_ff = block.attn.c_attn.ia3_l['causal'], block.mlp.c_proj.ia3_l['causal']
    assert l_kv.shape == (2 * C,) and l_ff.shape == (4 * C,)
    assert (not torch.allclose(l_kv, torch.ones_like(l_kv))
            and not torch.allclose(l_ff, torch.ones_like(l_ff)))
    with torch.no_grad():
        with adapter(gpt, None):
            q0, k0, v0 = block.attn.c_attn(x).split(C, dim=-1)
            ff0 = block.mlp.c_proj(h * l_ff)                  # the activation scaled by hand
            proj0 = block.attn.c_proj(x)
        with adapter(gpt, 'causal'):
            q, k, v = block.attn.c_attn(x).split(C, dim=-1)
            ff = block.mlp.c_proj(h)
            proj = block.attn.c_proj(x)
    assert torch.equal(q, q0)  # queries untouched
    assert (torch.allclose(k, k0 * l_kv[:C], atol=1e-6)
            and torch.allclose(v, v0 * l_kv[C:], atol=1e-6))
    assert torch.allclose(ff, ff0, atol=1e-6)
    assert torch.equal(proj, proj0)  # the attention output projection is not adapted
    n = sum(p.numel() for name, p in gpt.named_parameters() if is_adapter_param(name))
    # one vector each for k, v and the MLP activation
    assert n == gpt.config.n_layer * (2 * C + 4 * C)


def test_ia3_refuses_lora_targets_it_would_ignore(tmp_path):
    with pytest.raises(ValueError, match='lora_targets does not apply'):
        train.main(['--peft=ia3', '--lora_targets=c_attn', f'--out_dir={tmp_path}', '--device=cpu'])

# --------------------------------------------------------------- train.py, checkpoints, resume

TINY = ['--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=32', '--batch_size=8',
        '--eval_iters=1', '--eval_examples=8', '--toy_n_train=200', '--toy_n_val=16',
        '--toy_max_len=6', '--warmup_iters=2', '--device=cpu']


@pytest.fixture(scope='module')
def base_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp('base')
    train.main(TINY + ['--method=causal', '--max_iters=2', '--eval_interval=2', f'--out_dir={out}'])
    return str(out / 'ckpt.pt')


@pytest.mark.parametrize('kind', ['dora', 'ia3'])
def test_bitune_trains_saves_adapters_only_and_resumes_with_each_kind(tmp_path, base_ckpt, kind,
                                                                      monkeypatch):
    args = TINY + ['--method=bitune', f'--peft={kind}', f'--init_from={base_ckpt}', '--max_iters=4',
                   '--eval_interval=2', '--learning_rate=3e-2']
    straight = train.main(args + [f'--out_dir={tmp_path / "straight"}'])
    kill_after_first_checkpoint(monkeypatch,
                                lambda: train.main(args + [f'--out_dir={tmp_path / "killed"}']))
    resumed = train.main(args + [f'--out_dir={tmp_path / "killed"}', '--init_from=resume'])
    assert (resumed['train_loss'] == straight['train_loss']
            and resumed['val_loss'] == straight['val_loss'])

    path = str(tmp_path / 'straight' / 'ckpt.pt')
    ckpt = torch.load(path, weights_only=True)
    assert ckpt['adapter_only'] and all(is_adapter_param(k) for k in ckpt['model'])
    assert {'mix_theta_k', 'mix_theta_v'} <= set(ckpt['model'])
    # the rebuilt model: the frozen base from the base checkpoint, both adapters and the thetas
    # from this one
    model, gpt, _ = checkpoint.model_from_checkpoint(path)
    assert isinstance(model, Bitune) and adapter_kinds(gpt) == {'causal': kind, 'bidir': kind}
    _, base, _ = checkpoint.model_from_checkpoint(base_ckpt)
    assert torch.equal(gpt.transformer.h[0].attn.c_attn.weight,
                       base.transformer.h[0].attn.c_attn.weight)
    for k, v in ckpt['model'].items():
        assert torch.equal(model.state_dict()[k], v), k
    fresh = add_adapters(base, names=('causal', 'bidir'), kind=kind).state_dict()
    for name in ('causal', 'bidir'):  # both adapters trained: away from where a fresh one starts
        key = f"transformer.h.0.attn.c_attn.{MARKERS[kind][-1]}.{name}"
        assert not torch.equal(gpt.state_dict()[key], fresh[key]), key
    assert len(sample.main([f'--ckpt={path}', '--start=0123 R'])) == 1
