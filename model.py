"""
The model: a GPT-2 style decoder, with hand-written LoRA, switchable attention
masks and a KV cache. One file, meant to be read top to bottom.

What it adds to a plain nanoGPT model, and why:
- LoRA adapters with names (Hu et al., "LoRA", arXiv 2106.09685). Bitune
  (arXiv 2405.14862) reads the prompt twice with two different adapters,
  'causal' and 'bidir'; one call chooses which adapter the whole model runs.
- A per-call attention mode: 'causal' (the usual triangle) or 'bidir' (every
  token sees every real token), plus key padding, per-example positions and a
  KV cache that keeps its autograd graph (Bitune trains through the prompt's
  K/V). Hidden states of any layer can be returned (BAI, arXiv 2408.13959,
  trains them).
- generate() with a KV cache, for a batch of prompts of different lengths.

The model knows nothing about Bitune or BAI: bitune.py and bai.py use only the
generic keywords of forward() and generate().

Usage:
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, vocab_size=20, block_size=64))
    logits, loss = model(idx, targets)             # exactly nanoGPT's call
    model = GPT.from_pretrained('gpt2')             # GPT-2 weights, no `transformers`
"""

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# LoRA: a low-rank update  W x + (alpha / r) * B A x  next to a frozen weight W


class LoRALinear(nn.Linear):
    """nn.Linear plus any number of named low-rank adapters, one active at a time.

    A subclass of nn.Linear so `weight` and `bias` keep their names and GPT-2
    checkpoints load unchanged; LoRA only adds state-dict keys, such as
    `transformer.h.0.attn.c_attn.lora_A.causal`. With no active adapter this is
    exactly nn.Linear.
    """

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.lora_A = nn.ParameterDict()   # name -> (r, in)
        self.lora_B = nn.ParameterDict()   # name -> (out, r)
        self.lora_dropout = nn.ModuleDict()
        self.lora_scale = {}                # name -> alpha / r (config, not learned state)
        self.active = None                  # which adapter forward() adds, or None for the base
        self.merged = None                  # which adapter is currently folded into `weight`

    def add_adapter(self, name, r=8, alpha=8, dropout=0.0):
        if name in self.lora_A:
            raise ValueError(f"adapter '{name}' already exists on this layer")
        kw = dict(device=self.weight.device, dtype=self.weight.dtype)
        A = torch.empty(r, self.in_features, **kw)
        nn.init.kaiming_uniform_(A, a=math.sqrt(5))  # same init as nn.Linear's weight
        self.lora_A[name] = nn.Parameter(A)
        # B starts at zero, so a fresh adapter leaves the model's output unchanged
        self.lora_B[name] = nn.Parameter(torch.zeros(self.out_features, r, **kw))
        # dropout acts on the adapter's input only, never on the frozen path
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_scale[name] = alpha / r

    def delta_weight(self, name):
        return (self.lora_B[name] @ self.lora_A[name]) * self.lora_scale[name]  # (out, in)

    def forward(self, x):
        name = self.active
        if self.merged is not None and name != self.merged:
            # `weight` holds W + BA of the merged adapter; running anything else would be silently wrong
            raise RuntimeError(f"adapter '{self.merged}' is merged into the weight; call unmerge() "
                               f"before running with adapter {name!r}")
        if name is None or name == self.merged:
            return F.linear(x, self.weight, self.bias)                                 # W x + b
        A, B, scale, drop = self.lora_A[name], self.lora_B[name], self.lora_scale[name], self.lora_dropout[name]
        if self.weight.requires_grad and torch.is_grad_enabled() and isinstance(drop, nn.Identity):
            # W is trained too (Bitune's Pass A under peft='none'): backward pays for W's gradient anyway,
            # so one matmul with W + scale B A is cheaper than the two thin extra ones below. Same function.
            return F.linear(x, self.weight + scale * (B @ A), self.bias)
        return F.linear(x, self.weight, self.bias) + scale * (drop(x) @ A.t() @ B.t())  # W x + b + (alpha/r) B A x

    @torch.no_grad()
    def merge(self, name):
        """Fold adapter `name` into the weight: one matmul per layer at inference, as fast as no LoRA."""
        if self.merged is not None:
            raise RuntimeError(f"adapter '{self.merged}' is already merged; unmerge() it first")
        self.weight += self.delta_weight(name)
        self.merged = name

    @torch.no_grad()
    def unmerge(self):
        if self.merged is not None:
            self.weight -= self.delta_weight(self.merged)
            self.merged = None


def lora_layers(model):
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def add_lora(model, names=('causal',), r=8, alpha=8, dropout=0.0, targets=('c_attn', 'c_proj', 'c_fc')):
    """Give every targeted linear layer in the blocks one adapter per name.

    targets are module names inside a block; the default is every linear layer
    (attention in/out, MLP in/out). wte and lm_head are never adapted.
    """
    count = 0
    for mname, m in model.named_modules():
        if isinstance(m, LoRALinear) and mname.split('.')[-1] in targets:
            for name in names:
                m.add_adapter(name, r=r, alpha=alpha, dropout=dropout)
            count += 1
    if count == 0:
        raise ValueError(f"no linear layer matched targets={targets}; choose from c_attn, c_proj, c_fc")
    return model


def set_adapter(model, name):
    """Make `name` the active adapter of the whole model (None = base weights only)."""
    layers = lora_layers(model)
    if name is not None and not any(name in m.lora_A for m in layers):
        have = sorted({n for m in layers for n in m.lora_A})
        raise ValueError(f"no adapter named {name!r}; the model has {have or 'none (call add_lora first)'}")
    for m in layers:
        # layers left out of `targets` have no such adapter: they run their base weight
        m.active = name if name in m.lora_A else None


@contextmanager
def adapter(model, name):
    """`with adapter(model, 'bidir'): ...` runs the block with that adapter, then restores the previous one."""
    layers = lora_layers(model)
    before = [m.active for m in layers]
    set_adapter(model, name)
    try:
        yield model
    finally:
        for m, a in zip(layers, before):
            m.active = a


def mark_only_lora_trainable(model):
    """Freeze the base; every adapter (active or not) stays trainable: forward() only chooses."""
    for n, p in model.named_parameters():
        p.requires_grad = 'lora_' in n


def count_params(model):
    """(trainable, total) parameter counts; tied weights are counted once."""
    params = list(model.parameters())  # parameters() already deduplicates tied tensors
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def lora_state_dict(model):
    """Only the adapter tensors: a LoRA checkpoint is a few hundred KB, not the whole model."""
    return {k: v for k, v in model.state_dict().items() if 'lora_' in k}


def load_lora_state_dict(model, sd):
    want = set(lora_state_dict(model))
    missing, unexpected = sorted(want - set(sd)), sorted(set(sd) - want)
    if missing or unexpected:
        raise ValueError(f"adapter state dict does not match the model's adapters: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}. Add the same adapters (names, targets) before loading.")
    model.load_state_dict(sd, strict=False)

# -----------------------------------------------------------------------------
# Attention masks


def attention_mask(valid, T, attn):
    """Boolean mask for T queries that sit at the end of the S = valid.size(1) keys.

    valid: (B, S) True for real tokens (the cache's keys first, then this call's).
    Returns (B, 1, T, S), True = may attend. Query i is key number S - T + i, so
    with a cache the causal triangle is aligned bottom-right: this is why we never
    use SDPA's is_causal=True when queries and keys differ in length (it aligns
    the triangle top-left).
    """
    S = valid.size(1)
    q = torch.arange(S - T, S, device=valid.device).view(T, 1)  # absolute index of each query
    k = torch.arange(S, device=valid.device).view(1, S)
    allowed = valid[:, None, :]                                   # (B, 1, S): padding keys are never seen
    if attn == 'causal':
        allowed = allowed & (k <= q)                              # (B, T, S)
    # every query sees itself: a padding query would otherwise have no key at all
    # and softmax over nothing gives NaN. Real queries see themselves anyway.
    allowed = allowed | (k == q)
    return allowed[:, None]                                       # (B, 1, T, S), broadcast over heads

# -----------------------------------------------------------------------------
# The transformer


@dataclass
class GPTConfig:
    block_size: int = 1024   # longest sequence (number of learned positions)
    vocab_size: int = 50304  # GPT-2's 50257, padded up to a multiple of 64 for speed
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True        # biases in Linear and LayerNorm, like GPT-2


class SelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be a multiple of n_head"
        self.c_attn = LoRALinear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v at once
        self.c_proj = LoRALinear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout

    def forward(self, x, mask, is_causal, past_kv):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if past_kv is not None:
            k = torch.cat([past_kv[0], k], dim=2)  # (B, nh, past + T, hs)
            v = torch.cat([past_kv[1], v], dim=2)
        # mask and is_causal are never passed together (torch refuses that, and they would disagree)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, nh * hs): heads side by side
        return self.resid_dropout(self.c_proj(y)), (k, v)


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = LoRALinear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate='tanh')  # GPT-2's GELU
        self.c_proj = LoRALinear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = SelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, mask, is_causal, past_kv):
        a, kv = self.attn(self.ln_1(x), mask, is_causal, past_kv)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, kv


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying, as in GPT-2
        self.apply(self._init_weights)
        # GPT-2's scaled init of the residual projections: keeps the residual stream's variance flat with depth
        for pn, p in self.named_parameters():
            if pn.endswith('c_proj.weight'):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None, *, pos=None, valid=None, attn='causal', past_kv=None,
                return_kv=False, hidden_layer=None, return_logits=True):
        """Logits for every position, and the loss when targets are given.

        idx (B, T) token ids; targets (B, T) next tokens, -1 where no loss is taken.
        pos (B, T) position ids; default past_len + 0..T-1 (fine for right padding).
        valid (B, past_len + T) True for real tokens, cached ones first; default all.
        attn 'causal' or 'bidir'. past_kv: per layer (k, v), each (B, nh, past_len, hs).
        return_kv: also return every layer's (k, v) for past + current tokens, with
        their autograd graph. hidden_layer: also return the hidden state after block
        i, or after the final LayerNorm for -1. return_logits=False returns no logits: a pass
        that only needs K/V or hidden states skips lm_head, and with targets lm_head runs only
        where a target is scored (the same loss, without a (T x vocab) matmul over the prompt).
        Returns (logits, loss), or (logits, loss, aux) with aux = {'kv', 'hidden'}
        when return_kv or hidden_layer is asked for.
        """
        B, T = idx.size()
        past = 0 if past_kv is None else past_kv[0][0].size(2)
        if attn not in ('causal', 'bidir'):
            raise ValueError(f"attn must be 'causal' or 'bidir', got {attn!r}")
        if pos is None:
            if past + T > self.config.block_size:
                raise ValueError(f"sequence of {past + T} tokens is longer than block_size "
                                 f"{self.config.block_size}; shorten the input or use a model with a larger block_size")
            pos = torch.arange(past, past + T, device=idx.device)  # (T,), broadcast over the batch
        elif pos.max() >= self.config.block_size:
            raise ValueError(f"position {int(pos.max())} is past block_size {self.config.block_size}; shorten the input")
        if hidden_layer is not None and not -1 <= hidden_layer < self.config.n_layer:
            raise ValueError(f"hidden_layer must be -1 (after ln_f) or a block index 0..{self.config.n_layer - 1}")

        if valid is None and past == 0:
            # no padding and no cache: let SDPA use its fast built-in masks
            mask, is_causal = None, attn == 'causal'
        else:
            if valid is None:
                valid = torch.ones(B, past + T, dtype=torch.bool, device=idx.device)
            if valid.shape != (B, past + T):
                raise ValueError(f"valid must have shape (B, past + T) = {(B, past + T)}, got {tuple(valid.shape)}")
            mask, is_causal = attention_mask(valid, T, attn), False

        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        kvs, hidden = [], None
        for i, block in enumerate(self.transformer.h):
            x, kv = block(x, mask, is_causal, None if past_kv is None else past_kv[i])
            if return_kv:
                kvs.append(kv)
            if i == hidden_layer:
                hidden = x
        x = self.transformer.ln_f(x)
        if hidden_layer == -1:
            hidden = x
        logits = self.lm_head(x) if return_logits else None  # (B, T, vocab): every position, not only the last

        loss = None
        if targets is not None:  # a mean over every target that is not -1: each answer token weighs the same
            if return_logits:
                loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
            else:
                # the same mean, with lm_head run on the scored positions only. With GPT-2's 50k vocabulary
                # and a 600-token dialogue ahead of a 60-token summary this skips ~90% of the head's work
                # and its (B, T, vocab) logits in memory. (The boolean index costs a GPU sync.)
                scored = targets != -1                                    # (B, T)
                loss = F.cross_entropy(self.lm_head(x[scored]), targets[scored])
        if not return_kv and hidden_layer is None:
            return logits, loss
        return logits, loss, {'kv': kvs if return_kv else None, 'hidden': hidden}

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, *, valid=None,
                 stop_token=None, generator=None, prefill=None):
        """Continue a batch of prompts with a KV cache; returns (B, T + max_new_tokens).

        idx (B, T) prompts left-padded so they all end in the last column; valid
        (B, T) marks the real tokens. temperature 0 is greedy. After a row emits
        stop_token it is filled with stop_token. generator: a torch.Generator, so
        sampling never touches the global (training) random state. prefill: a
        function (idx, pos, valid) -> (last logits (B, V), kv cache) that replaces
        the plain causal pass over the prompt (Bitune's two-pass prefill plugs in
        here); decoding afterwards is the same for every method.
        """
        B, T = idx.size()
        if temperature < 0 or (top_k is not None and top_k < 1):  # a negative temperature picks the least likely
            raise ValueError(f"temperature must be >= 0 and top_k >= 1 (or None), got {temperature} and {top_k}")
        if T + max_new_tokens > self.config.block_size:
            raise ValueError(f"prompt ({T} tokens) + max_new_tokens ({max_new_tokens}) exceeds block_size "
                             f"{self.config.block_size}; shorten the prompt or ask for fewer tokens")
        if valid is None:
            valid = torch.ones(B, T, dtype=torch.bool, device=idx.device)
        if not valid[:, -1].all():
            raise ValueError("prompts must be left-padded: the last column must be a real token in every row")
        pos = (valid.long().cumsum(1) - 1).clamp(min=0)  # real tokens get 0, 1, ...; padding gets 0 (never seen)
        if prefill is None:
            # only the last position's logits are needed: skip lm_head elsewhere (a large matmul for GPT-2)
            _, _, aux = self(idx, pos=pos, valid=valid, return_kv=True, hidden_layer=-1, return_logits=False)
            last, kv = self.lm_head(aux['hidden'][:, -1]), aux['kv']
        else:
            last, kv = prefill(idx, pos, valid)
        next_pos = pos[:, -1:] + 1  # (B, 1)
        done = torch.zeros(B, dtype=torch.bool, device=idx.device)
        out = [idx]
        for step in range(max_new_tokens):
            tok = self._sample(last, temperature, top_k, generator)  # (B, 1)
            if stop_token is not None:
                tok = tok.masked_fill(done[:, None], stop_token)     # finished rows stop growing
                done = done | (tok[:, 0] == stop_token)
            out.append(tok)
            if step == max_new_tokens - 1 or (stop_token is not None and bool(done.all())):
                break
            valid = torch.cat([valid, torch.ones(B, 1, dtype=torch.bool, device=idx.device)], dim=1)
            logits, _, aux = self(tok, pos=next_pos, valid=valid, past_kv=kv, return_kv=True)
            last, kv, next_pos = logits[:, -1], aux['kv'], next_pos + 1
        out = torch.cat(out, dim=1)
        if out.size(1) < T + max_new_tokens:  # stopped early: every row is finished, pad with the stop token
            out = F.pad(out, (0, T + max_new_tokens - out.size(1)), value=stop_token)
        return out

    @staticmethod
    def _sample(logits, temperature, top_k, generator):
        if temperature == 0:
            return logits.argmax(dim=-1, keepdim=True)
        logits = logits.float() / temperature
        if top_k is not None:
            v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
            logits = logits.masked_fill(logits < v[:, [-1]], float('-inf'))
        probs = F.softmax(logits, dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=generator)

    @classmethod
    def from_pretrained(cls, name_or_dir, dropout=0.0):
        """GPT-2 weights from a name ('gpt2', 'gpt2-medium', ...) or a local directory (see utils/weights.py)."""
        from utils import weights  # only needed here; keeps model.py importable on its own
        cfg, sd = weights.load_gpt2(name_or_dir)
        model = cls(GPTConfig(**{**cfg, 'dropout': dropout}))
        weights.load_into(model, sd)
        return model

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, eps=1e-8):
        return configure_optimizers(self, weight_decay, learning_rate, betas, device_type, eps)


def configure_optimizers(module, weight_decay, learning_rate, betas, device_type, eps=1e-8, adapter_weight_decay=0.0):
    """AdamW over the trainable parameters of any module (a GPT, or a wrapper such as Bitune's).

    Three groups: 2-D base weights (decayed), 1-D base parameters (biases,
    LayerNorm; never decayed), and adapters: LoRA tensors and Bitune's mixing
    scalars, recognised by 'lora_' or 'mix_' in their names, with their own
    weight decay (0 by default, as in the Bitune authors' setup).
    """
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    adapters = [p for n, p in named if 'lora_' in n or 'mix_' in n]
    base = [(n, p) for n, p in named if not ('lora_' in n or 'mix_' in n)]
    groups = [
        {'params': [p for _, p in base if p.dim() >= 2], 'weight_decay': weight_decay},
        {'params': [p for _, p in base if p.dim() < 2], 'weight_decay': 0.0},
        {'params': adapters, 'weight_decay': adapter_weight_decay},
    ]
    groups = [g for g in groups if g['params']]
    if not groups:
        raise ValueError("nothing to train: every parameter is frozen")
    trainable, total = count_params(module)
    print(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)"
          f"  [base: {sum(p.numel() for _, p in base):,}, adapters: {sum(p.numel() for p in adapters):,}]")
    fused = device_type == 'cuda'  # the fused CUDA kernel is faster; it does not exist on cpu/mps
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps, fused=fused)
