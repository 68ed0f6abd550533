"""
Bitune: read the prompt both causally and bidirectionally, mix the two, answer causally.
Kopiczko et al., "Bitune: Bidirectional Instruction-Tuning", arXiv 2405.14862; EMNLP 2025 as
"Bitune: Leveraging Bidirectional Attention to Improve Decoder-Only LLMs".

One frozen GPT (or, for full fine-tuning, one trainable GPT) with two named adapters, 'causal' and
'bidir', of any kind (LoRA, DoRA or IA3: adapters.py). The prompt minus its last token is read
twice: Pass A without a causal mask ('bidir' adapter), Pass B with one ('causal' adapter). Each
layer's keys and values of the two passes are mixed with learned scalars, and Pass C reads the
answer causally on top of that mixed prefix. Bitune.forward walks through steps 1-7 in the paper's
order, and prefill() is step 8, generation; the README numbers the steps the same way.

    gpt = add_adapters(GPT(cfg), names=('causal', 'bidir'), kind='dora')   # or 'lora', 'ia3'
    mark_only_adapters_trainable(gpt)
    bitune = Bitune(gpt)                          # variant='full'
    loss, aux = bitune(tasks.collate(examples))   # training
    out = bitune.generate(idx, 20, valid=valid)   # same call as GPT.generate
"""
import torch
import torch.nn as nn

from adapters import adapter, adapter_kinds

# The authors' ablations, one row each, as in the paper's table.
VARIANTS = {
    #               Pass A mask  Pass A adapter  Pass B  mixing
    'full':        ('bidir',    'bidir',        True,   'learned'),
    'naive':       ('bidir',    'causal',       False,  None),       # the answer reads Pass A only
    'no_mixing':   ('bidir',    'bidir',        False,  None),       # the answer reads Pass A only
    'only_causal': ('causal',   'bidir',        True,   'learned'),
    'shared':      ('bidir',    'causal',       True,   'learned'),
    'fixed':       ('bidir',    'bidir',        True,   'fixed'),    # alpha = 0.5, nothing learned
}


def tokens_read(prompt_len, answer_len, variant='full'):
    """Token-forwards of one example in a training step, the measure of Bitune's cost: Pass A reads
    the prefix (P - 1 tokens), Pass B reads it again (in variants that have one), Pass C reads the
    last prompt token and the answer without its end token (A tokens). A causal step reads P + A."""
    passes = 2 if VARIANTS[variant][2] else 1
    return passes * (prompt_len - 1) + answer_len


def check_bidir_reaches_kv(variant, n_layer, targets):
    """Refuse a model whose Pass A keys and values are exactly a causal pass's: Bitune would pay
    for two readings and train plain LoRA. Layer l computes its K/V from its input, before its
    attention runs, so the bidirectional mask reaches K/V from layer 1 on, and Pass A's own adapter
    through layer l's c_attn or any adapted layer below l. With one layer only an adapted c_attn
    counts, and only in variants whose Pass A has its own adapter."""
    own_adapter = VARIANTS[variant][1] == 'bidir'
    if n_layer >= 2 or (own_adapter and 'c_attn' in targets.split(',')):
        return
    raise ValueError(f"Bitune (variant '{variant}') with {n_layer} layer and "
                     f"lora_targets={targets!r}: the bidirectional reading cannot change any key "
                     f"or value the answer reads (keys and values are computed before attention), "
                     f"so this would train plain LoRA at Bitune's cost. Use n_layer >= 2"
                     + (", or add c_attn to lora_targets" if own_adapter else ""))


class Bitune(nn.Module):
    """Wraps a GPT. causal_adapter / bidir_adapter name its adapters (any kind: adapters.py).

    causal_adapter=None trains all weights (no adapter for the causal side): Passes B and C then run
    the base weights and Pass A runs base + the 'bidir' adapter, so the two readings of the prompt
    still have separate weights.
    """

    def __init__(self, gpt, variant='full', theta_init=0.01, causal_adapter='causal',
                 bidir_adapter='bidir'):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown Bitune variant {variant!r}; choose one of "
                             f"{', '.join(VARIANTS)}")
        if theta_init <= 0:
            raise ValueError(f"theta_init must be > 0 (alpha = |theta| / (|theta| + theta_init)), "
                             f"got {theta_init}")
        self.gpt, self.variant, self.theta_init = gpt, variant, theta_init
        self.causal_adapter, self.bidir_adapter = causal_adapter, bidir_adapter
        self.a_attn, a_role, self.has_pass_b, self.mixing = VARIANTS[variant]
        self.a_adapter = causal_adapter if a_role == 'causal' else bidir_adapter
        have = set(adapter_kinds(gpt))
        for name in {self.a_adapter, causal_adapter} - {None} - have:
            raise ValueError(f"variant '{variant}' needs an adapter named {name!r}; the model has "
                             f"{sorted(have) or 'none'}. Call add_adapters(gpt, names=...) first.")
        if self.mixing == 'learned':
            # theta starts at theta_init, so alpha starts at 0.5. The 'mix_' prefix puts these
            # in configure_optimizers' adapter group (no weight decay).
            L = gpt.config.n_layer
            self.mix_theta_k = nn.Parameter(torch.full((L,), float(theta_init)))  # one per layer
            self.mix_theta_v = nn.Parameter(torch.full((L,), float(theta_init)))

    @property
    def config(self):
        """The wrapped GPT's config, so code that reads model.config.block_size works for both."""
        return self.gpt.config

    # ------------------------------------------------------------------ training

    def forward(self, batch, hidden_layer=-1):
        """A right-padded batch from data.tasks.collate -> (loss, aux); rows are gathered, never
        looped over. aux also holds the prefix passes' states at hidden_layer (model.Body.at: -1
        after ln_f, a block, or counted back), for a loss on them such as BAI's: 'bidir_hidden' from
        Pass A, 'causal_hidden' from Pass B (None without one), each (B, max(P)-1, C), real where
        'prefix_valid'."""
        idx, pos, targets = batch['idx'], batch['pos'], batch['targets']
        P, A = batch['prompt_len'], batch['answer_len']  # (B,) each
        if int(P.min()) < 2:
            raise ValueError("Bitune needs prompts of at least 2 tokens: the prefix is the prompt "
                             "minus its last token. Add a BOS or template token.")
        # 1. prefix = x[0:P-1]: the first max(P)-1 columns, row i real on its first P_i - 1
        Tp = int(P.max()) - 1
        prefix_valid = torch.arange(Tp, device=idx.device)[None] < (P - 1)[:, None]  # (B, Tp)
        # 2-4. Pass A (bidirectional), Pass B (causal), and their K/V mixed per layer
        kv, hidden_a, hidden_b = self.read_prefix(idx[:, :Tp], pos[:, :Tp], prefix_valid,
                                                  hidden_layer)
        # 5. Pass C reads x[P_i-1 : P_i+A_i-1] of row i: those columns, left-aligned to width max(A)
        t = torch.arange(int(A.max()), device=idx.device)[None]        # (1, Tc)
        answer_valid = t < A[:, None]                                    # (B, Tc)
        cols = ((P - 1)[:, None] + t).clamp(max=idx.size(1) - 1)         # clamped columns: padding
        tgt = targets.gather(1, cols).masked_fill(~answer_valid, -1)     # the answer, end token too
        # 6. the loss: GPT's token-weighted mean over every answer token of the batch, as for the
        # causal baseline (the authors average per example, then over examples; we do not)
        logits, loss, _ = self.pass_c(idx.gather(1, cols), pos.gather(1, cols),
                                      torch.cat([prefix_valid, answer_valid], 1), kv, tgt)
        # 7. backward (in train.py) flows through all three passes into both adapters and every
        # theta: both adapters stay trainable, each pass only chooses which one is active
        return loss, {'logits': logits, 'targets': tgt, 'answer_valid': answer_valid,
                      'bidir_hidden': hidden_a, 'causal_hidden': hidden_b,
                      'prefix_valid': prefix_valid}

    # ------------------------------------------------------------------ reading the prefix (2-4)

    def pass_a(self, prefix, pos, valid, hidden_layer=-1):
        """Pass A: the prefix with no causal mask (padding keys still masked), 'bidir' adapter.
        Returns every layer's (K, V) and the states at hidden_layer. Only its K/V reach the answer,
        so the last block's attention-output and MLP adapters get no gradient from this pass
        (unless a loss on its states sends them one)."""
        with adapter(self.gpt, self.a_adapter):
            out = self.gpt.body(prefix, pos, valid, attn=self.a_attn)  # no logits: never used
        return out.kv, out.at(hidden_layer)

    def pass_b(self, prefix, pos, valid, hidden_layer=-1):
        """Pass B: the same prefix and positions, the ordinary causal mask, 'causal' adapter.
        Independent of Pass A: nothing mixed is fed back into either pass."""
        with adapter(self.gpt, self.causal_adapter):
            out = self.gpt.body(prefix, pos, valid, attn='causal')
        return out.kv, out.at(hidden_layer)

    def alpha(self):
        """Per-layer weights of the bidirectional side, (alpha_k, alpha_v), each (L,) float32."""
        if self.mixing == 'learned':
            c = self.theta_init
            t_k, t_v = self.mix_theta_k.float().abs(), self.mix_theta_v.float().abs()
            return t_k / (t_k + c), t_v / (t_v + c)  # alpha = |theta| / (|theta| + theta_init)
        const = torch.full((self.gpt.config.n_layer,), 0.5 if self.mixing == 'fixed' else 1.0,
                           device=self.gpt.lm_head.weight.device)
        return const, const  # 'fixed': 0.5; no mixing: the answer reads Pass A alone (alpha = 1)

    def mix(self, kv_a, kv_b):
        """Mix per layer l, K and V apart, in float32, then cast back to the passes' dtype."""
        a_k, a_v = self.alpha()
        mixed = []
        for l, ((k_a, v_a), (k_b, v_b)) in enumerate(zip(kv_a, kv_b)):
            k = (1 - a_k[l]) * k_b.float() + a_k[l] * k_a.float()  # K = (1 - alpha) K_B + alpha K_A
            v = (1 - a_v[l]) * v_b.float() + a_v[l] * v_a.float()  # V likewise
            mixed.append((k.to(k_b.dtype), v.to(v_b.dtype)))        # each (B, nh, prefix_len, hs)
        return mixed

    def read_prefix(self, prefix, pos, valid, hidden_layer=-1):
        """Pass A, Pass B and the mix: the mixed K/V per layer, and the states at hidden_layer of
        Pass A and of Pass B (None without Pass B)."""
        kv_a, hidden_a = self.pass_a(prefix, pos, valid, hidden_layer)
        if not self.has_pass_b:
            return kv_a, hidden_a, None  # 'naive' and 'no_mixing': the answer reads Pass A's K/V
        kv_b, hidden_b = self.pass_b(prefix, pos, valid, hidden_layer)
        return self.mix(kv_a, kv_b), hidden_a, hidden_b

    def pass_c(self, tokens, pos, valid, kv, targets=None):
        """Pass C: last prompt token + answer, 'causal' adapter, attending causally to
        [mixed prefix ; own]. valid covers both; the model's mask aligns the triangle bottom-right.
        Returns (logits, loss, K/V per layer over the prefix and these tokens)."""
        with adapter(self.gpt, self.causal_adapter):
            out = self.gpt.body(tokens, pos, valid, past_kv=kv)
            return *self.gpt.head(out.x, targets), out.kv

    # ------------------------------------------------------------------ generation

    def prefill(self, idx, pos, valid):
        """8. Generation: steps 1-5 once on left-padded prompts, Pass C on the last prompt token.
        Returns its logits (B, V) and the KV cache over all prompt columns for GPT.generate."""
        if idx.size(1) < 2 or int(valid.sum(1).min()) < 2:
            raise ValueError("Bitune needs prompts of at least 2 tokens (the prefix is the prompt "
                             "minus its last token); add a BOS or template token")
        kv, _, _ = self.read_prefix(idx[:, :-1], pos[:, :-1], valid[:, :-1])
        logits, _, kv = self.pass_c(idx[:, -1:], pos[:, -1:], valid, kv)
        return logits[:, -1], kv

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, *, valid=None,
                 stop_token=None, generator=None):
        """GPT.generate with Bitune's prefill. Decoding afterwards is the plain cached decode with
        the 'causal' adapter: the cache is the baseline's size, so each new token costs the same."""
        with adapter(self.gpt, self.causal_adapter):
            return self.gpt.generate(idx, max_new_tokens, temperature, top_k, valid=valid,
                                     stop_token=stop_token, generator=generator,
                                     prefill=self.prefill)

    def alphas(self):
        """The current mixing weights, for logging: {'alpha_k': [per layer], 'alpha_v': [...]}."""
        a_k, a_v = self.alpha()
        return {'alpha_k': a_k.detach().tolist(), 'alpha_v': a_v.detach().tolist()}
