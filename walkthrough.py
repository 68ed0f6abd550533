"""
One batch of two toy prompts of different lengths, traced through Bitune and BAI.

    python walkthrough.py                     # a random 2-layer GPT: every step's real tensors
    python walkthrough.py --ckpt=out/ckpt.pt  # the model of a toy Bitune run (train.py's default)
    # also draw the masks of Passes A, B and C
    python walkthrough.py --plot=docs/figures/passes.png

Nothing here re-implements a step: the real functions run (Bitune.pass_a, pass_b, mix, pass_c,
bai.pivots, equalize, awareness_loss, and model.attention_mask inside GPT.body), each wrapped
so that its inputs and outputs are recorded, and every number printed is one of those tensors.
The asserts at the end check that the recorded pieces add up to the loss the methods returned.
Without --ckpt the model is a random 2-layer GPT with train.py's default method (Bitune, peft
'none': the base weights read causally, the base plus a 'bidir' LoRA bidirectionally), so alpha
is still 0.5 and the LoRA still adds nothing; --ckpt traces any toy checkpoint of train.py instead
(a causal or BAI one: BAI's steps only). BAI's steps run on the GPT inside, with its causal adapter.
"""
import os
import sys
from contextlib import contextmanager
from types import SimpleNamespace

import torch
import torch.nn.functional as F

import bai
import model as model_module
from configurator import configure
from utils.runtime import run_main
from data.tasks import collate
from data.toy import toy
from adapters import adapted_layers, adapter_kinds
from bitune import Bitune
from utils.checkpoint import build_model, model_from_checkpoint
from utils.plot import save_png

ckpt = ''  # a toy checkpoint from train.py; '' = a random 2-layer model
plot = ''  # a .png path: draw the three passes' attention masks there
DEFAULTS = {'ckpt': ckpt, 'plot': plot}
# two examples of different lengths: with 10 symbols and room enough, '3141 R' and '271828 S',
# prompts of 7 and 9 tokens, answers of 5 and 7
DIGITS, OPS = [(3, 1, 4, 1), (2, 7, 1, 8, 2, 8)], ('R', 'S')
SETTINGS = dict(init_from='scratch', method='bitune', peft='none',
                bitune_variant='full', bitune_theta_init=0.01,
                n_layer=2, n_head=2, n_embd=16, block_size=32, dropout=0.0, bias=True,
                lora_r=8, lora_alpha=8, lora_dropout=0.0, lora_targets='c_attn,c_proj,c_fc')


@contextmanager
def recording(owner, *names):
    """Inside the block each owner.name runs the real function and appends (args, result) to
    calls[name]; yields calls. Afterwards owner is as before: a module gets its functions back, an
    object loses the wrappers set on it and so finds its class's methods again."""
    calls, before = {name: [] for name in names}, dict(vars(owner))

    def wrap(name, real):
        def wrapper(*args, **kwargs):
            result = real(*args, **kwargs)
            calls[name].append((args, result))
            return result
        return wrapper
    for name in names:
        setattr(owner, name, wrap(name, getattr(owner, name)))
    try:
        yield calls
    finally:
        for name in names:
            if name in before:
                setattr(owner, name, before[name])
            else:
                delattr(owner, name)


def text(ids, meta, valid=None):
    """Token ids as characters, '.' where valid is False."""
    ids = ids.tolist()
    keep = [True] * len(ids) if valid is None else valid.tolist()
    return ''.join(meta['itos'][t] if k else '.' for t, k in zip(ids, keep))


def bits(valid):
    return ''.join('1' if v else '0' for v in valid.tolist())


def nums(t, fmt='{:+.3f}'):
    return ' '.join(fmt.format(x) for x in t.tolist())


def adapter_of(gpt, name):
    """What a pass runs, in words: 'no adapter (the base weights)' or "adapter 'causal' (dora)"."""
    return "no adapter (the base weights)" if name is None else \
        f"adapter {name!r} ({adapter_kinds(gpt)[name]})"


def examples_for(meta, block_size):
    """The two toy examples, in the checkpoint's own symbols and operations, shortened until
    prompt + answer fit its block_size (a toy example of n symbols takes 2n + 4 tokens)."""
    symbols, ops = meta['itos'][4 + len(toy.OPS):], meta.get('ops', toy.OPS)
    n = min(len(DIGITS[1]), (block_size - 4) // 2)  # the longer row's symbols
    if n < 2:
        raise ValueError(f"block_size {block_size} is too small for the walkthrough's toy examples "
                         f"(8 tokens at least); pass --ckpt a model of block_size 8 or more")
    lengths = (len(DIGITS[0]), len(DIGITS[1])) if n == len(DIGITS[1]) else (n - 1, n)
    return [toy.make_example(op if op in ops else ops[-1],
                             ''.join(symbols[d % len(symbols)] for d in digits[:k]), meta)
            for digits, k, op in zip(DIGITS, lengths, OPS)]


def trace_bitune(bitune, batch, meta):
    """Bitune.forward on the batch, every pass recorded; prints steps 1-6 and returns what the
    plot needs."""
    # and the mask GPT.body builds for each pass
    with recording(bitune, 'pass_a', 'pass_b', 'mix', 'pass_c') as calls, \
            recording(model_module, 'attention_mask') as masks:
        loss, _ = bitune(batch)
    (prefix, pos_a, valid_a, _), (kv_a, _) = calls['pass_a'][0]
    (tokens_c, pos_c, valid_c, kv_c, tgt), (logits, loss_c, _) = calls['pass_c'][0]
    a_k, a_v = bitune.alpha()
    P, A = batch['prompt_len'], batch['answer_len']
    B, nh, Tp, hs = kv_a[0][0].shape
    gpt = bitune.gpt
    print(f"Bitune (bitune.py, variant {bitune.variant}): Bitune.forward(batch)")
    print(f"1. prefix = the prompt minus its last token: the first max(P)-1 = {Tp} columns")
    for b in range(B):
        print(f"   row {b}  {text(prefix[b], meta, valid_a[b])}  prefix_valid {bits(valid_a[b])}  "
              f"pos {nums(pos_a[b], '{}')}")
    mask = 'bidirectional' if bitune.a_attn == 'bidir' else 'causal'
    print(f"2. Pass A: {mask} mask, {adapter_of(gpt, bitune.a_adapter)}: K and V per "
          f"layer, each {tuple(kv_a[0][0].shape)} = (batch, heads, prefix columns, head size)")
    if bitune.has_pass_b:
        _, (kv_b, _) = calls['pass_b'][0]
        _, mixed = calls['mix'][0]
        print(f"3. Pass B: causal mask, {adapter_of(gpt, bitune.causal_adapter)}: "
              f"K and V of the same shape")
        print("   max |K_A - K_B| per column of row 1 "
              "(layer 0: the adapters alone, K/V come before attention)")
        for l in range(len(kv_a)):
            diff = (kv_a[l][0][1] - kv_b[l][0][1]).abs().amax(dim=(0, 2))  # (Tp,)
            print(f"   layer {l}  " + ' '.join(f'{d:.4f}' for d in diff.tolist()))
        print("4. mix, per layer: K = (1 - alpha_k) K_B + alpha_k K_A, V likewise")
        print(f"   alpha_k {nums(a_k, '{:.3f}')}   alpha_v {nums(a_v, '{:.3f}')}")
        l = len(kv_a) - 1
        print(f"   layer {l}, row 0, head 0, column 0, K[:3]:  A {nums(kv_a[l][0][0, 0, 0, :3])}  "
              f"B {nums(kv_b[l][0][0, 0, 0, :3])}  mixed {nums(mixed[l][0][0, 0, 0, :3])}")
    else:
        mixed = kv_a
        print(f"3. Pass B: none in variant {bitune.variant!r}")
        print("4. mix: none; the answer reads Pass A's K and V (alpha = 1)")
    Tc = tokens_c.size(1)
    print("5. Pass C: the last prompt token and the answer without its end token, "
          "at their own positions,")
    print(f"   causal over [{'mixed' if bitune.has_pass_b else 'Pass A'} prefix ; own] = "
          f"{Tp} + {Tc} keys, {adapter_of(gpt, bitune.causal_adapter)}")
    for b in range(B):
        own = valid_c[b, Tp:]
        print(f"   row {b}  tokens {text(tokens_c[b], meta, own)}  pos {nums(pos_c[b], '{:2d}')}  "
              f"targets {text(tgt[b].clamp(min=0), meta, tgt[b] >= 0)}  "
              f"key valid {bits(valid_c[b, :Tp])}|{bits(own)}")
    n = int((tgt >= 0).sum())
    print(f"6. loss: cross-entropy of Pass C's logits {tuple(logits.shape)} "
          f"over the {n} answer tokens = {loss.item():.4f}")
    # the recorded pieces add up to the loss Bitune.forward returned
    assert torch.equal(loss_c, loss)
    assert torch.allclose(F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=-1),
                          loss)
    if bitune.has_pass_b:
        for (ka, va), (kb, vb), (km, vm), l in zip(kv_a, kv_b, mixed, range(len(mixed))):
            assert (torch.allclose(km, (1 - a_k[l]) * kb + a_k[l] * ka)
                    and torch.allclose(vm, (1 - a_v[l]) * vb + a_v[l] * va))
    assert kv_c is mixed
    # Pass C read row b's columns P_b - 1 .. P_b + A_b - 2, and predicts its answer
    for b in range(B):
        p, a = int(P[b]), int(A[b])
        assert torch.equal(tokens_c[b, :a], batch['idx'][b, p - 1:p + a - 1])
        assert torch.equal(tgt[b, :a], batch['idx'][b, p:p + a])
    # Pass A, (Pass B,) Pass C: (B, 1, queries, keys) each
    titles = [f"Pass A: prefix, {'bidirectional' if bitune.a_attn == 'bidir' else 'causal'}"]
    titles += ['Pass B: prefix, causal'] * bitune.has_pass_b + ['Pass C: prefix ; own tokens']
    return [m for _, m in masks['attention_mask']], titles, (prefix, valid_a, tokens_c, valid_c)


def trace_bai(gpt, batch, meta, weight=1.0, layer=-2, kind='mse'):
    """bai.compute_loss on the same batch, every step recorded; prints steps 1-5."""
    with recording(bai, 'pivots', 'answer_tokens', 'equalize', 'awareness_loss') as calls:
        total, ce, l_bai = bai.compute_loss(gpt, batch, weight=weight, layer=layer, kind=kind)
    _, (E, pivot_valid) = calls['pivots'][0]
    _, (tokens, answer_valid) = calls['answer_tokens'][0]
    (D, _, _), (E_hat, S) = calls['equalize'][0]
    _, l_rec = calls['awareness_loss'][0]
    B = E.size(0)
    L = gpt.config.n_layer
    active = next((m.active for m in adapted_layers(gpt) if m.active), None)
    print(f"BAI (bai.py): bai.compute_loss(gpt, batch, weight={weight}, layer={layer}, "
          f"kind={kind!r}): one causal forward, {adapter_of(gpt, active)}")
    where = 'the final state (after ln_f)' if layer == -1 else f'the output of block {layer % L}'
    print(f"1. pivots E {tuple(E.shape)}: {where} at the prompt columns")
    for b in range(B):
        print(f"   row {b}  {text(batch['idx'][b, :E.size(1)], meta, pivot_valid[b])}  "
              f"pivot_valid {bits(pivot_valid[b])}")
    print(f"2. targets D = wte(answer tokens) {tuple(D.shape)}, detached:  "
          + '   '.join(f"row {b} {text(tokens[b], meta, answer_valid[b])}" for b in range(B)))
    print(f"3. S = softmax(D E^T / sqrt({D.size(-1)})) {tuple(S.shape)}, "
          f"E_hat = S E {tuple(E_hat.shape)}; row 0's first rows (columns: its pivots):")
    for j in range(3):
        print(f"   answer {text(tokens[0, j:j + 1], meta)}  {nums(S[0, j], '{:.3f}')}")
    print(f"4. awareness loss ({kind}, over the {int(answer_valid.sum())} real answer positions) "
          f"= {l_bai.item():.4f}")
    print(f"5. total = CE {ce.item():.4f} + {weight} x {l_bai.item():.4f} = {total.item():.4f}")
    assert l_rec is l_bai and torch.allclose(total, ce + weight * l_rec)
    assert (torch.allclose(S.sum(-1), torch.ones_like(S[..., 0]))
            and (S[~pivot_valid[:, None, :].expand_as(S)] == 0).all())


def plot_masks(path, masks, titles, pieces, meta):
    """The passes' masks as GPT.body built them: a row per example, a column per pass."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    prefix, valid_a, tokens_c, valid_c = pieces
    Tp = prefix.size(1)
    B, n = prefix.size(0), len(masks)
    fig, axes = plt.subplots(B, n, figsize=(5 * n, 4.2 * B),
                             gridspec_kw={'width_ratios': [Tp] * (n - 1) + [2 * Tp + 2]})
    for b in range(B):
        q_prefix = list(text(prefix[b], meta, valid_a[b]))
        q_c = list(text(tokens_c[b], meta, valid_c[b, Tp:]))
        for col, mask in enumerate(masks):
            queries, keys = (q_c, q_prefix + q_c) if col == n - 1 else (q_prefix, q_prefix)
            ax = axes[b][col]
            ax.imshow(mask[b, 0].numpy(), cmap='Greys', vmin=0, vmax=1.6)
            ax.set_xticks(range(len(keys)), keys, fontsize=11)
            ax.set_yticks(range(len(queries)), queries, fontsize=11)
            ax.set_xlabel('keys (. = padding)', fontsize=9)
            ax.set_ylabel('queries', fontsize=9)
            ax.set_title(f"row {b}: {titles[col]}", fontsize=11)
            if col == n - 1:
                ax.axvline(Tp - 0.5, color='C3', lw=2)
    fig.suptitle("attention masks built by model.attention_mask for one batch "
                 "(grey = may attend; no query sees a padding key but itself; "
                 "red line: mixed prefix | Pass C's own)", fontsize=12)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    save_png(fig, path, dpi=90)
    print('wrote', path)


def main(argv=None):
    c = SimpleNamespace(**configure(DEFAULTS, sys.argv[1:] if argv is None else argv))
    if c.plot and not c.plot.endswith('.png'):
        raise ValueError(f"--plot={c.plot!r}: give a .png path, "
                         f"e.g. --plot=docs/figures/passes.png")
    if c.ckpt:
        model, gpt, saved = model_from_checkpoint(c.ckpt)
        meta, run = saved['meta'], saved['config']
        if meta['tokenizer'] != 'char':
            raise ValueError(f"--ckpt={c.ckpt}: walkthrough.py traces toy models (one character "
                             f"per token); this one reads '{meta['name']}' with GPT-2's tokenizer")
        if c.plot and not isinstance(model, Bitune):
            raise ValueError(f"--plot draws Bitune's passes, and --ckpt={c.ckpt} is a "
                             f"'{run['method']}' model; leave --plot out")
        what = f"The model in {c.ckpt} ({run['method']}, peft {run['peft']})"
        # BAI's pivots at the run's own layer, else the default one the model has
        layer = run['bai_layer'] if 'bai' in run['method'] else -2 if gpt.config.n_layer > 1 else -1
    else:
        meta = toy.toy_meta()
        torch.manual_seed(0)
        model, gpt = build_model(SETTINGS, meta)
        what, layer = "A random GPT", -2
    cfg = gpt.config
    examples = examples_for(meta, cfg.block_size)
    batch = collate(examples, pad_id=meta['pad'])
    print(f"{what}, {cfg.n_layer} layers, {cfg.n_head} heads, n_embd {cfg.n_embd}; "
          f"a batch of two toy examples (data.tasks.collate, '.' = padding):")
    for b, ex in enumerate(examples):
        print(f"   row {b}  idx {text(batch['idx'][b], meta, batch['valid'][b])}  "
              f"prompt_len {len(ex['prompt'])}  answer_len {len(ex['answer'])}")
    with torch.no_grad():
        if isinstance(model, Bitune):
            masks, titles, pieces = trace_bitune(model.eval(), batch, meta)
        else:
            print("Bitune: not this model's method, so there are no prefix passes to trace")
        trace_bai(gpt.eval(), batch, meta, layer=layer)
    if c.plot:
        plot_masks(c.plot, masks, titles, pieces, meta)


if __name__ == '__main__':
    run_main(main)
