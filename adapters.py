"""
Adapters: small trained additions to a frozen linear layer y = W x + b, several per layer, each with
a name and one kind. model.py builds every linear layer as an AdaptedLinear: with no adapter active
it is exactly nn.Linear.

  LoRA (Hu et al., arXiv 2106.09685)   y = W x + b + s B A x       s = alpha / r, B starts at 0
  DoRA (Liu et al., arXiv 2402.09353)  y = m * (W + s B A) x / ||W + s B A|| + b
                                       a norm per output unit, m starts at ||W||
  IA3  (Liu et al., arXiv 2205.05638)  y = l * (W x + b)  or  y = W (l * x) + b,  l starts at ones

Bitune (arXiv 2405.14862) reads the prompt twice with two adapters, 'causal' and 'bidir'; one call
chooses which adapter the whole model runs, whatever their kind.

    add_adapters(model, names=('causal', 'bidir'), kind='dora'); set_adapter(model, 'bidir')
    with adapter(model, 'causal'): ...   # run the model with another adapter for a while
"""
import math
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

KINDS = ('lora', 'dora', 'ia3')


class AdaptedLinear(nn.Linear):
    """nn.Linear plus any number of named adapters (LoRA, DoRA or IA3), one active at a time.

    A subclass of nn.Linear so `weight` and `bias` keep their names and GPT-2
    checkpoints load unchanged; adapters only add state-dict keys, such as
    `transformer.h.0.attn.c_attn.lora_A.causal`, `...dora_m.causal` or `...ia3_l.causal`.
    With no active adapter this is exactly nn.Linear.
    """

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.kind = {}                      # name -> 'lora' | 'dora' | 'ia3' (config, not state)
        self.lora_A = nn.ParameterDict()    # name -> (r, in)     LoRA and DoRA
        self.lora_B = nn.ParameterDict()    # name -> (out, r)    LoRA and DoRA
        self.lora_dropout = nn.ModuleDict()
        self.lora_scale = {}                # name -> alpha / r
        self.dora_m = nn.ParameterDict()    # name -> (out,)      DoRA's magnitude per output unit
        self.ia3_l = nn.ParameterDict()     # name -> (in,) or (out - skip,)   IA3's scales
        self.ia3_on = {}                    # name -> 'in' or 'out': scale the input or the output
        self.active = None                  # which adapter forward() uses, or None for the base
        self.merged = None                  # which adapter is currently folded into `weight`
        self.unmerged = None                # (weight, bias) as they were before merge()

    def add_adapter(self, name, kind='lora', r=8, alpha=8, dropout=0.0, ia3_on='in', ia3_skip=0):
        """LoRA and DoRA use r, alpha and dropout. IA3 has no rank and no dropout: it scales
        every input feature (ia3_on='in') or the output features after the first ia3_skip
        (ia3_on='out')."""
        if name in self.kind:
            raise ValueError(f"adapter '{name}' already exists on this layer")
        if kind not in KINDS:
            raise ValueError(f"unknown adapter kind {kind!r}; choose one of {KINDS}")
        kw = dict(device=self.weight.device, dtype=self.weight.dtype)
        if kind == 'ia3':
            n = self.in_features if ia3_on == 'in' else self.out_features - ia3_skip
            self.ia3_l[name] = nn.Parameter(torch.ones(n, **kw))  # ones: changes nothing
            self.ia3_on[name] = ia3_on
        else:
            A = torch.empty(r, self.in_features, **kw)
            nn.init.kaiming_uniform_(A, a=math.sqrt(5))  # same init as nn.Linear's weight
            self.lora_A[name] = nn.Parameter(A)
            # B starts at zero, so a fresh adapter leaves the model's output unchanged
            self.lora_B[name] = nn.Parameter(torch.zeros(self.out_features, r, **kw))
            # dropout acts on the adapter's input only, never on the frozen path
            self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
            self.lora_scale[name] = alpha / r
            if kind == 'dora':  # m starts at W's row norms: m * W / ||W|| = W, nothing changes
                self.dora_m[name] = nn.Parameter(self.weight.detach().norm(dim=1))
        self.kind[name] = kind

    def delta_weight(self, name):
        return (self.lora_B[name] @ self.lora_A[name]) * self.lora_scale[name]  # (out, in)

    def dora_scale(self, name):
        """m / ||W + s B A|| for each output unit, (out,): the norm of row i of the (out, in)
        weight. The norm is computed without autograd, so backward treats it as a constant, as
        DoRA's section 4.3 recommends to save training memory: gradients reach m, A and B
        through the numerator only."""
        with torch.no_grad():
            norm = (self.weight + self.delta_weight(name)).norm(dim=1)  # (out,)
        return self.dora_m[name] / norm

    def ia3_out_scale(self, name):
        """IA3's scale of every output feature, (out,): ones for the first ia3_skip (c_attn's
        queries), then l."""
        l = self.ia3_l[name]
        return F.pad(l, (self.out_features - l.numel(), 0), value=1.0)

    def forward(self, x):
        name = self.active
        if self.merged is not None and name != self.merged:
            # `weight` holds the merged adapter: running anything else would be silently wrong
            raise RuntimeError(f"adapter '{self.merged}' is merged into the weight; call unmerge() "
                               f"before running with adapter {name!r}")
        if name is None or name == self.merged:
            return F.linear(x, self.weight, self.bias)                        # W x + b
        if self.kind[name] == 'ia3':
            if self.ia3_on[name] == 'in':
                return F.linear(x * self.ia3_l[name], self.weight, self.bias)  # W (l * x) + b
            return F.linear(x, self.weight, self.bias) * self.ia3_out_scale(name)  # l * (W x + b)
        A, B, scale, drop = (self.lora_A[name], self.lora_B[name],
                             self.lora_scale[name], self.lora_dropout[name])
        if self.kind[name] == 'dora':
            y = F.linear(x, self.weight) + scale * (drop(x) @ A.t() @ B.t())  # (W + s B A) x
            y = y * self.dora_scale(name)                                     # * m / ||W + s B A||
            return y if self.bias is None else y + self.bias
        if self.weight.requires_grad and torch.is_grad_enabled() and isinstance(drop, nn.Identity):
            # W is trained too (Bitune's Pass A under peft='none'): backward pays for W's
            # gradient anyway, so one matmul with W + s B A beats the two thin ones below
            return F.linear(x, self.weight + scale * (B @ A), self.bias)
        return F.linear(x, self.weight, self.bias) + scale * (drop(x) @ A.t() @ B.t())  # LoRA

    @torch.no_grad()
    def adapted_weight(self, name):
        """The (weight, bias) of one plain linear layer that computes adapter `name`'s output."""
        W, b = self.weight, self.bias
        if self.kind[name] == 'lora':
            return W + self.delta_weight(name), b
        if self.kind[name] == 'dora':
            return self.dora_scale(name)[:, None] * (W + self.delta_weight(name)), b
        if self.ia3_on[name] == 'in':
            return W * self.ia3_l[name], b  # scaling input j = scaling column j of W
        s = self.ia3_out_scale(name)  # scaling output i = scaling row i and b_i
        return W * s[:, None], None if b is None else b * s

    @torch.no_grad()
    def merge(self, name):
        """Fold adapter `name` into weight (and bias): one plain matmul per layer at inference.
        A copy of the weight is kept so unmerge() restores it exactly (DoRA's normalisation cannot
        be undone from the merged weight alone); the copy holds the layer's weight a second time
        until then."""
        if self.merged is not None:
            raise RuntimeError(f"adapter '{self.merged}' is already merged; unmerge() it first")
        W, b = self.adapted_weight(name)
        self.unmerged = (self.weight.clone(), None if self.bias is None else self.bias.clone())
        self.weight.copy_(W)
        if b is not None:
            self.bias.copy_(b)
        self.merged = name

    @torch.no_grad()
    def unmerge(self):
        if self.merged is not None:
            self.weight.copy_(self.unmerged[0])
            if self.bias is not None:
                self.bias.copy_(self.unmerged[1])
            self.merged, self.unmerged = None, None


def adapted_layers(model):
    return [m for m in model.modules() if isinstance(m, AdaptedLinear)]


def adapter_kinds(model):
    """{name: kind} of every adapter in the model, e.g. {'causal': 'dora', 'bidir': 'dora'}."""
    return {name: kind for m in adapted_layers(model) for name, kind in m.kind.items()}


def add_adapters(model, names=('causal',), kind='lora', r=8, alpha=8, dropout=0.0,
                 targets=('c_attn', 'c_proj', 'c_fc')):
    """Give the blocks' linear layers one adapter of `kind` per name.

    LoRA and DoRA go on every targeted layer (module names inside a block; the default is every
    linear layer: attention in/out, MLP in/out). IA3 goes where its paper puts it, whatever targets
    says: on the keys and values (the last two thirds of attn.c_attn's fused q, k, v output, so the
    queries are left alone) and on the MLP's inner activation (the input of mlp.c_proj).
    wte and lm_head are never adapted. Add adapters after loading the base weights: DoRA's m
    starts at the norms of the weights it finds.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown adapter kind {kind!r}; choose one of {KINDS}")
    count = 0
    for mname, m in model.named_modules():
        if not isinstance(m, AdaptedLinear):
            continue
        place = '.'.join(mname.split('.')[-2:])  # e.g. 'attn.c_attn' or 'mlp.c_proj'
        if kind == 'ia3' and place == 'attn.c_attn':
            opts = dict(ia3_on='out', ia3_skip=m.out_features // 3)  # outputs are (q, k, v): skip q
        elif kind == 'ia3' and place == 'mlp.c_proj':
            opts = dict(ia3_on='in')
        elif kind != 'ia3' and place.split('.')[-1] in targets:
            opts = dict(r=r, alpha=alpha, dropout=dropout)
        else:
            continue
        for name in names:
            m.add_adapter(name, kind, **opts)
        count += 1
    if count == 0:
        raise ValueError(f"no linear layer matched targets={targets}; "
                         f"choose from c_attn, c_proj, c_fc")
    return model


def set_adapter(model, name):
    """Make `name` the active adapter of the whole model (None = base weights only)."""
    if name is not None and name not in adapter_kinds(model):
        have = sorted(adapter_kinds(model))
        raise ValueError(f"no adapter named {name!r}; "
                         f"the model has {have or 'none (call add_adapters first)'}")
    for m in adapted_layers(model):
        # layers without such an adapter (not in `targets`, not an IA3 place) run the base
        m.active = name if name in m.kind else None


@contextmanager
def adapter(model, name):
    """`with adapter(model, 'bidir'): ...` runs the block with that adapter, then restores the
    previous one."""
    layers = adapted_layers(model)
    before = [m.active for m in layers]
    set_adapter(model, name)
    try:
        yield model
    finally:
        for m, a in zip(layers, before):
            m.active = a


def is_adapter_param(name):
    """Adapter tensors of any kind, and Bitune's mixing scalars ('mix_'): what a frozen-base run
    trains and an adapter-only checkpoint keeps. Every such name holds one of these markers."""
    return any(marker in name for marker in ('lora_', 'dora_', 'ia3_', 'mix_'))


def mark_only_adapters_trainable(model):
    """Freeze the base; every adapter (active or not) stays trainable: forward() only chooses."""
    for n, p in model.named_parameters():
        p.requires_grad = is_adapter_param(n)


def adapter_state_dict(model):
    """Only the adapter tensors: an adapter checkpoint is a few hundred KB, not the whole model."""
    return {k: v for k, v in model.state_dict().items() if is_adapter_param(k)}


def load_adapter_state_dict(model, sd):
    want = set(adapter_state_dict(model))
    missing, unexpected = sorted(want - set(sd)), sorted(set(sd) - want)
    if missing or unexpected:
        raise ValueError(f"adapter state dict does not match the model's adapters: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}. "
                         f"Add the same adapters (names, kind, targets) before loading.")
    model.load_state_dict(sd, strict=False)
