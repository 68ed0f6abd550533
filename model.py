"""
The model: a GPT-2 style decoder, switchable attention masks and a KV cache. One file,
meant to be read top to bottom; its linear layers carry adapters (adapters.py).

What it adds to a plain nanoGPT model, and why:
- Every linear layer is an adapters.AdaptedLinear: named adapters of one kind each
  (LoRA, DoRA, IA3) can be added, and one call chooses which the whole model runs.
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
    add_adapters(model, names=('causal', 'bidir'), kind='dora'); set_adapter(model, 'bidir')   # adapters.py
"""

import math
from dataclasses import dataclass

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
    allowed = valid[:, None, :]                                   # (B, 1, S): padding keys are never seen
    if attn == 'causal':
        allowed = allowed & (k <= q)                              # (B, T, S)
    # every query sees itself: a padding query would otherwise have no key at all
    # and softmax over nothing gives NaN. Real queries see themselves anyway.
    allowed = allowed | (k == q)
    return allowed[:, None]                                       # (B, 1, T, S), broadcast over heads

# -----------------------------------------------------------------------------
# The KV cache of generation


class KVCache:
    """One layer's keys and values during generation, in buffers allocated once for the whole sequence.

    Growing the cache with torch.cat would allocate and copy all of it at every new token, a cost
    that grows with the sequence. Here a token's K/V is written in place after the filled
    part, and attention reads the filled part only: the same keys, values and mask as with
    torch.cat, so the same results. (Training does not use this: Bitune's Pass C needs the
    autograd graph through the prompt's K/V, which torch.cat keeps.)
    """

    def __init__(self, k, v, size):
        B, nh, T, hs = k.shape                                   # the prompt's K/V
        self.k, self.v = k.new_empty(B, nh, size, hs), v.new_empty(B, nh, size, hs)
        self.k[:, :, :T], self.v[:, :, :T] = k, v
        self.len = T                                             # columns filled so far

    def append(self, k, v):
        """Write this call's k, v (B, nh, T, hs) after the filled columns; return all filled ones."""
        end = self.len + k.size(2)
        self.k[:, :, self.len:end], self.v[:, :, self.len:end] = k, v
        self.len = end
        return self.k[:, :, :end], self.v[:, :, :end]

# -----------------------------------------------------------------------------
# The transformer

def has_hidden_layer(layer, n_layer):
    """Whether GPT.forward can return hidden_layer=layer: -1 (after ln_f), a block 0..n_layer-1, or
    -2..-n_layer counted back from the final state (-2: block n_layer-2). BAI's pivots use the same rule."""
    return -n_layer <= layer < n_layer


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
        self.c_attn = AdaptedLinear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v at once
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
        attn 'causal' or 'bidir'. past_kv: per layer (k, v), each (B, nh, past_len, hs), or per layer a
        KVCache (generate()), which this call extends in place.
        return_kv: also return every layer's (k, v) for past + current tokens, with
        their autograd graph. hidden_layer: also return the hidden state after block
        i (0..n_layer-1), after the final LayerNorm for -1, or counted back from there for
        -2..-n_layer: -2 is the block before the last (n_layer - 2). return_logits=False returns no logits: a pass
        that only needs K/V or hidden states skips lm_head, and with targets lm_head runs only
        where a target is scored (the same loss, without a (T x vocab) matmul over the prompt).
        Returns (logits, loss), or (logits, loss, aux) with aux = {'kv', 'hidden'}
        when return_kv or hidden_layer is asked for.
        """
        B, T = idx.size()
        past = 0 if past_kv is None else (past_kv[0].len if isinstance(past_kv[0], KVCache)  # tokens already cached
                                          else past_kv[0][0].size(2))
        if attn not in ('causal', 'bidir'):
            raise ValueError(f"attn must be 'causal' or 'bidir', got {attn!r}")
        if pos is None:
            if past + T > self.config.block_size:
                raise ValueError(f"sequence of {past + T} tokens is longer than block_size "
                                 f"{self.config.block_size}; shorten the input or use a model with a larger block_size")
            pos = torch.arange(past, past + T, device=idx.device)  # (T,), broadcast over the batch
        elif not torch.compiler.is_compiling() and pos.max() >= self.config.block_size:  # compiled: no sync
            raise ValueError(f"position {int(pos.max())} is past block_size {self.config.block_size}; shorten the input")
        L = self.config.n_layer
        if hidden_layer is not None and not has_hidden_layer(hidden_layer, L):
            back = f", or -2..-{L} to count back from the final state" if L > 1 else " (one block: nothing before it)"
            raise ValueError(f"hidden_layer={hidden_layer} (train.py's --bai_layer) on a {L}-block model: use -1 "
                             f"(after ln_f), a block index 0..{L - 1}{back}")
        if hidden_layer is not None and hidden_layer < -1:
            hidden_layer += L  # -2 -> block L-2: the final state counts as the last layer

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
        # compiled: no boolean index below (its shape depends on the data, which breaks the graph)
        all_logits = return_logits or torch.compiler.is_compiling()
        logits = self.lm_head(x) if all_logits else None  # (B, T, vocab): every position, not only the last

        loss = None
        if targets is not None:  # a mean over every target that is not -1: each answer token weighs the same
            if all_logits:
                loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
            else:
                # the same mean, with lm_head run on the scored positions only. With GPT-2's 50k vocabulary
                # and a 600-token dialogue ahead of a 60-token summary this skips ~90% of the head's work
                # and its (B, T, vocab) logits in memory. (The boolean index costs a GPU sync.)
                scored = targets != -1                                    # (B, T)
                loss = F.cross_entropy(self.lm_head(x[scored]), targets[scored])
        logits = logits if return_logits else None
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
        kv = [KVCache(k, v, T + max_new_tokens) for k, v in kv]  # room for every token to come
        valid = torch.cat([valid, valid.new_ones(B, max_new_tokens)], dim=1)  # new tokens are all real
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
            logits, _ = self(tok, pos=next_pos, valid=valid[:, :T + step + 1], past_kv=kv)  # extends kv
            last, next_pos = logits[:, -1], next_pos + 1
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
        cfg, sd = weights.load_gpt2(name_or_dir)
        model = cls(GPTConfig(**{**cfg, 'dropout': dropout}))
        weights.load_into(model, sd)
        return model

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, eps=1e-8):
        return configure_optimizers(self, weight_decay, learning_rate, betas, device_type, eps)


def count_params(model):
    """(trainable, total) parameter counts; tied weights are counted once."""
    params = list(model.parameters())  # parameters() already deduplicates tied tensors
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def configure_optimizers(module, weight_decay, learning_rate, betas, device_type, eps=1e-8, adapter_weight_decay=0.0):
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
    print(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)"
          f"  [base: {sum(p.numel() for _, p in base):,}, adapters: {sum(p.numel() for p in adapters):,}]")
    fused = device_type == 'cuda'  # the fused CUDA kernel is faster; it does not exist on cpu/mps
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps, fused=fused)
