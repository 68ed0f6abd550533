"""
The model: a GPT-2 style decoder with switchable attention masks and a KV cache. One file, meant to
be read top to bottom; its linear layers carry adapters (adapters.py).

What it adds to nanoGPT's model, and why:
- Every linear layer is an adapters.AdaptedLinear: named adapters of one kind each (LoRA, DoRA,
  IA3) can be added, and one call chooses which the whole model runs.
- GPT.body, the transformer itself, takes an attention mode per call, 'causal' (the usual
  triangle) or 'bidir' (every token sees every real token), key padding, per-example positions
  and a KV cache that keeps its autograd graph (Bitune trains through the prompt's K/V). It
  returns the final state, every block's output (BAI trains one of them) and every layer's K/V.
- generate() with a KV cache, for a batch of prompts of different lengths.

The model knows nothing about Bitune or BAI: bitune.py and bai.py call GPT.body.

Usage:
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, vocab_size=20, block_size=64))
    logits, loss = model(idx, targets)             # exactly nanoGPT's call
    out = model.body(idx, attn='bidir')             # out.x, out.hidden[i], out.kv[i] = (k, v)
    model = GPT.from_pretrained('gpt2')             # GPT-2 weights, no `transformers`
"""

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from adapters import AdaptedLinear, is_adapter_param
from utils import weights

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
    allowed = valid[:, None, :]                        # (B, 1, S): padding keys are never seen
    if attn == 'causal':
        allowed = allowed & (k <= q)                   # (B, T, S)
    # every query sees itself: a padding query would otherwise have no key at all
    # and softmax over nothing gives NaN. Real queries see themselves anyway.
    allowed = allowed | (k == q)
    return allowed[:, None]                            # (B, 1, T, S), broadcast over heads

# -----------------------------------------------------------------------------
# The KV cache of generation


class KVCache:
    """One layer's keys and values during generation, in buffers allocated once for the sequence.

    Growing the cache with torch.cat would allocate and copy all of it at every new token, a cost
    that grows with the sequence. Here a token's K/V is written in place after the filled part,
    and attention reads the filled part only: the same keys, values and mask as with torch.cat,
    so the same results. (Training does not use this: Bitune's Pass C needs the autograd graph
    through the prompt's K/V, which torch.cat keeps.)
    """

    def __init__(self, k, v, size):
        B, nh, T, hs = k.shape                                   # the prompt's K/V
        self.k, self.v = k.new_empty(B, nh, size, hs), v.new_empty(B, nh, size, hs)
        self.k[:, :, :T], self.v[:, :, :T] = k, v
        self.len = T                                             # columns filled so far

    def append(self, k, v):
        """Write this call's k, v (B, nh, T, hs) after the filled columns; return all filled."""
        end = self.len + k.size(2)
        self.k[:, :, self.len:end], self.v[:, :, self.len:end] = k, v
        self.len = end
        return self.k[:, :, :end], self.v[:, :, :end]

# -----------------------------------------------------------------------------
# The transformer

def has_hidden_layer(layer, n_layer):
    """Whether Body.at(layer) exists: -1 (the final state, after ln_f), a block 0..n_layer-1, or
    -2..-n_layer counted back from the final state (-2: block n_layer-2)."""
    return -n_layer <= layer < n_layer


class Body(NamedTuple):
    """What GPT.body returns for B sequences of T tokens."""
    x: torch.Tensor  # (B, T, C) the final state, after ln_f: lm_head reads it
    hidden: list     # the output of every block, n_layer tensors (B, T, C)
    kv: list         # every layer's (k, v), each (B, n_head, past + T, head size), with their graph

    def at(self, layer):
        """The state at `layer` (see has_hidden_layer): the final state for -1, else a block's."""
        L = len(self.hidden)
        if not has_hidden_layer(layer, L):
            raise ValueError(f"layer {layer}: a {L}-block model has -1 (after ln_f), blocks "
                             f"0..{L - 1}, or -2..-{L} counted back")
        return self.x if layer == -1 else self.hidden[layer]


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
        self.c_attn = AdaptedLinear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v
        self.c_proj = AdaptedLinear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout

    def forward(self, x, mask, is_causal, past_kv):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if isinstance(past_kv, KVCache):  # generation: written in place
            k, v = past_kv.append(k, v)    # (B, nh, past + T, hs)
        elif past_kv is not None:          # training: a new tensor that keeps the graph to past_kv
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
        self.c_fc = AdaptedLinear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate='tanh')  # GPT-2's GELU
        self.c_proj = AdaptedLinear(4 * config.n_embd, config.n_embd, bias=config.bias)
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
        # GPT-2's scaled init of the residual projections: the residual stream's variance stays flat
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

    def forward(self, idx, targets=None, *, pos=None, valid=None, attn='causal', past_kv=None):
        """nanoGPT's call: (logits, loss). idx (B, T) token ids; targets (B, T) the next tokens, -1
        where no loss is taken; the keywords go to body(). logits (B, T, vocab) for every position;
        loss: with targets, the mean cross-entropy over every target that is not -1."""
        return self.head(self.body(idx, pos, valid, attn, past_kv).x, targets)

    def body(self, idx, pos=None, valid=None, attn='causal', past_kv=None):
        """The transformer, without the output layer: returns a Body (the final state, every block's
        output, every layer's K/V).

        pos (B, T) position ids; default past + 0..T-1 (fine for right padding).
        valid (B, past + T) True for real tokens, cached ones first; default all.
        attn 'causal' or 'bidir'. past_kv: per layer (k, v) of earlier tokens, each
        (B, n_head, past, head size), or per layer a KVCache (generate()), extended in place.
        """
        pos, mask, is_causal = self._inputs(idx, pos, valid, attn, past_kv)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # B, T, C
        hidden, kv = [], []
        for i, block in enumerate(self.transformer.h):
            x, layer_kv = block(x, mask, is_causal, None if past_kv is None else past_kv[i])
            hidden.append(x)
            kv.append(layer_kv)
        return Body(self.transformer.ln_f(x), hidden, kv)

    def head(self, x, targets=None):
        """(logits, loss) from the final state x (B, T, C), as nanoGPT's forward ends."""
        logits = self.lm_head(x)  # (B, T, vocab): every position, not only the last
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)

    def answer_loss(self, x, targets):
        """The same loss as head(x, targets) without its logits: lm_head runs only where a target
        is scored. Training needs no logits, and with GPT-2's 50k-token vocabulary and a 600-token
        dialogue ahead of a 60-token summary this skips most of the head's work and its
        (B, T, vocab) logits in memory. (The boolean index costs a GPU sync.)"""
        scored = targets != -1                                      # (B, T)
        return F.cross_entropy(self.lm_head(x[scored]), targets[scored])

    def _inputs(self, idx, pos, valid, attn, past_kv):
        """body()'s argument checks, in one place, and what its blocks need: the positions, and the
        attention mask with is_causal (only one of the two is ever used: torch refuses both)."""
        B, T = idx.size()
        past = 0 if past_kv is None else (past_kv[0].len if isinstance(past_kv[0], KVCache)
                                          else past_kv[0][0].size(2))  # tokens already cached
        if attn not in ('causal', 'bidir'):
            raise ValueError(f"attn must be 'causal' or 'bidir', got {attn!r}")
        if pos is None:
            pos = torch.arange(past, past + T, device=idx.device)  # (T,), broadcast over the batch
        last = past + T - 1 if pos.dim() == 1 else int(pos.max())
        if last >= self.config.block_size:
            raise ValueError(f"position {last} is past block_size {self.config.block_size}: the "
                             f"input is longer than this model can read")
        if valid is None and past == 0:
            return pos, None, attn == 'causal'  # no padding, no cache: SDPA's own fast masks
        if valid is None:
            valid = torch.ones(B, past + T, dtype=torch.bool, device=idx.device)
        if valid.shape != (B, past + T):
            raise ValueError(f"valid must have shape (B, past + T) = {(B, past + T)}, "
                             f"got {tuple(valid.shape)}")
        return pos, attention_mask(valid, T, attn), False

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
        if temperature < 0 or (top_k is not None and top_k < 1):  # < 0 picks the least likely
            raise ValueError(f"temperature must be >= 0 and top_k >= 1 (or None), got "
                             f"{temperature} and {top_k}")
        if T + max_new_tokens > self.config.block_size:
            raise ValueError(f"prompt ({T} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
                             f"block_size {self.config.block_size}; shorten the prompt or ask for "
                             f"fewer tokens")
        if valid is None:
            valid = torch.ones(B, T, dtype=torch.bool, device=idx.device)
        if not valid[:, -1].all():
            raise ValueError("prompts must be left-padded: the last column is real in every row")
        pos = (valid.long().cumsum(1) - 1).clamp(min=0)  # real tokens 0, 1, ...; padding 0 (unseen)
        if prefill is None:
            out = self.body(idx, pos, valid)
            last, kv = self.lm_head(out.x[:, -1]), out.kv  # only the last position's logits
        else:
            last, kv = prefill(idx, pos, valid)
        kv = [KVCache(k, v, T + max_new_tokens) for k, v in kv]  # room for every token to come
        valid = torch.cat([valid, valid.new_ones(B, max_new_tokens)], dim=1)  # new tokens are real
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
            logits, _ = self(tok, pos=next_pos, valid=valid[:, :T + step + 1], past_kv=kv)
            last, next_pos = logits[:, -1], next_pos + 1
        out = torch.cat(out, dim=1)
        if out.size(1) < T + max_new_tokens:  # every row stopped early: pad with the stop token
            out = F.pad(out, (0, T + max_new_tokens - out.size(1)), value=stop_token)
        return out

    @staticmethod
    def _sample(logits, temperature, top_k, generator):
        if temperature == 0:
            return logits.argmax(dim=-1, keepdim=True)
        logits = logits.float()
        logits = (logits - logits.amax(-1, keepdim=True)) / temperature  # <= 0: never inf
        if top_k is not None:
            v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
            logits = logits.masked_fill(logits < v[:, [-1]], float('-inf'))
        probs = F.softmax(logits, dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=generator)

    @classmethod
    def from_pretrained(cls, name_or_dir, dropout=0.0):
        """GPT-2 weights from a name ('gpt2', 'gpt2-medium', ...) or a folder (utils/weights.py)."""
        cfg, sd = weights.load_gpt2(name_or_dir)
        model = cls(GPTConfig(**{**cfg, 'dropout': dropout}))
        weights.load_into(model, sd)
        return model

def count_params(model):
    """(trainable, total) parameter counts; tied weights are counted once."""
    params = list(model.parameters())  # parameters() already deduplicates tied tensors
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def configure_optimizers(module, weight_decay, learning_rate, betas, device_type, eps=1e-8,
                         adapter_weight_decay=0.0):
    """AdamW over the trainable parameters of any module (a GPT, or a wrapper such as Bitune's).

    Three groups: 2-D base weights (decayed), 1-D base parameters (biases,
    LayerNorm; never decayed), and adapters of any kind with Bitune's mixing
    scalars (is_adapter_param), with their own weight decay (0 by default, as
    in the Bitune authors' setup; decay would also pull DoRA's m and IA3's l
    towards 0, away from where they start).
    """
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    adapters = [p for n, p in named if is_adapter_param(n)]
    base = [(n, p) for n, p in named if not is_adapter_param(n)]
    groups = [
        {'params': [p for _, p in base if p.dim() >= 2], 'weight_decay': weight_decay},
        {'params': [p for _, p in base if p.dim() < 2], 'weight_decay': 0.0},
        {'params': adapters, 'weight_decay': adapter_weight_decay},
    ]
    groups = [g for g in groups if g['params']]
    if not groups:
        raise ValueError("nothing to train: every parameter is frozen")
    trainable, total = count_params(module)
    n_base, n_adapters = sum(p.numel() for _, p in base), sum(p.numel() for p in adapters)
    print(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)"
          f"  [base: {n_base:,}, adapters: {n_adapters:,}]")
    fused = device_type == 'cuda'  # the fused CUDA kernel is faster; it does not exist on cpu/mps
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps, fused=fused)
