"""
Pictures of a training run, drawn from its out_dir/log.jsonl:

    python utils/plot.py out              # writes out/loss.png, out/metric.png
                                          #   (and out/alpha.png for Bitune)
    python utils/plot.py out "31415 R"    # also out/attention.png: how a causal and a bidirectional
                                          #   reading of that toy prompt attend in layer 0,
                                          #   from out/ckpt.pt
    python utils/plot.py out "31415 R" 1  # the same in layer 1

train.py calls plot_run() at the end of every run; running this file redraws
the plots of any run, finished or not.
"""
import math
import os
import sys

# the repo root, when run as a script
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from utils import runtime  # noqa: E402
if __name__ == '__main__':  # before matplotlib loads (seconds): Ctrl-C from now on prints one line
    runtime.catch_signals("nothing was lost; run it again")

import matplotlib  # noqa: E402

matplotlib.use('Agg')  # files only: works on a server with no display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from adapters import adapter, adapter_kinds  # noqa: E402
from data.toy import toy  # noqa: E402
from model import attention_mask  # noqa: E402
from utils.checkpoint import model_from_checkpoint  # noqa: E402
from utils.rundir import read_log  # noqa: E402


def save_png(fig, path, dpi=100):
    """Write the figure whole or not at all (a killed run or a full disk leaves no half picture);
    returns path."""
    with runtime.atomic_file(path, 'wb') as f:
        fig.savefig(f, format='png', dpi=dpi)
    plt.close(fig)
    return path


def finite(x):
    """Whether x is a number a picture can show (not a text, not NaN or infinite)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def series(rows, key, index=None, positive=False):
    """(iterations, values) of the rows that have a finite value for key (its index-th item when
    index is given; above 0 when positive, for a log axis): a row without it (a log of another kind,
    or a damaged row) is a missing point, skipped, never drawn as nan."""
    its, ys = [], []
    for r in rows:
        v = r.get(key)
        if index is not None:
            v = v[index] if isinstance(v, list) and index < len(v) else None
        if finite(v) and (v > 0 or not positive):
            its.append(r['iter'])
            ys.append(v)
    return its, ys


def plot_run(out_dir):
    """Draw every plot the log has data for; returns the paths written."""
    if not os.path.isfile(os.path.join(out_dir, 'log.jsonl')):
        raise FileNotFoundError(f"{out_dir} holds no log.jsonl: pass the out_dir of a run of "
                                f"train.py (python train.py writes out/)")
    rows = read_log(out_dir)
    if not rows:
        raise ValueError(f"{out_dir}/log.jsonl has no rows yet: a run writes its first at "
                         f"iteration 0, once its model is built; plot it after that")
    written = []

    def save(fig, name):
        fig.tight_layout()
        written.append(save_png(fig, os.path.join(out_dir, name)))

    # losses; for BAI the awareness loss sits beside the autoregressive one
    losses = {name: series(rows, key, positive=True)
              for name, key in (('train', 'train_loss'), ('val', 'val_loss'))}
    losses = {name: s for name, s in losses.items() if s[0]}  # no train_loss at iteration 0
    bai = series(rows, 'bai_loss')
    if losses or bai[0]:
        fig, axes = plt.subplots(1, 2 if bai[0] else 1, figsize=(11 if bai[0] else 6, 4),
                                 squeeze=False)
        ax = axes[0][0]
        for name, (its, ys) in losses.items():
            ax.plot(its, ys, label=name, marker='o' if len(its) == 1 else None)
        ax.set(xlabel='iteration', ylabel='cross-entropy on answer tokens', title='loss')
        if losses:
            ax.set_yscale('log')
            ax.legend()
        if bai[0]:
            ax = axes[0][1]
            ax.plot(*bai, color='C2', label='awareness loss (train)')
            ax.set(xlabel='iteration', ylabel='BAI loss', title='BAI awareness loss and its weight')
            twin = ax.twinx()
            twin.plot(*series(rows, 'bai_weight'), color='C3', ls='--', label='weight')
            twin.set_ylabel('lambda * Lambda(t)')
            ax.legend(loc='upper right')
        save(fig, 'loss.png')

    # the task metric: exact match (overall and per operation) or ROUGE, from every row's keys
    keys = [k for k in dict.fromkeys(k for r in rows for k in r)
            if k == 'exact_match' or k.startswith('em_') or k.startswith('rouge')]
    metrics = {k: s for k in keys for s in [series(rows, k)] if s[0]}
    if metrics:
        fig, ax = plt.subplots(figsize=(6, 4))
        for k, (its, ys) in metrics.items():
            ax.plot(its, ys, label=k, lw=2.5 if k == 'exact_match' else 1.2,
                    marker='o' if len(its) == 1 else None)
        ax.set(xlabel='iteration', ylabel='percent', title='task metric (greedy generation on val)')
        ax.legend()
        save(fig, 'metric.png')

    # Bitune: every layer's mixing coefficient, alpha = weight of the bidirectional side
    layers = max((len(r[k]) for r in rows for k in ('alpha_k', 'alpha_v')
                  if isinstance(r.get(k), list)), default=0)
    alphas = {key: {layer: s for layer in range(layers)
                    for s in [series(rows, key, index=layer)] if s[0]}
              for key in ('alpha_k', 'alpha_v')}
    if any(alphas.values()):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
        for ax, key in zip(axes, ('alpha_k', 'alpha_v')):
            for layer, (its, ys) in alphas[key].items():
                ax.plot(its, ys, label=f'layer {layer}', marker='o' if len(its) == 1 else None)
            ax.axhline(0.5, color='grey', lw=0.5)
            ax.set(xlabel='iteration', title=f'Bitune {key} (1 = bidirectional pass only)',
                   ylim=(0, 1))
        axes[0].set_ylabel('alpha')
        (axes[1] if alphas['alpha_v'] else axes[0]).legend(fontsize=8)
        save(fig, 'alpha.png')
    if not written:
        raise ValueError(f"{out_dir}/log.jsonl has {len(rows)} row(s) but no loss, task metric "
                         f"or alpha to draw: it is not the log of a train.py run, or a damaged "
                         f"one; pass the out_dir of a run of train.py")
    return written


def attention_weights(gpt, idx, layer, attn):
    """softmax(Q K^T / sqrt(hs)) of one layer, every head: (n_head, T, T) for one prompt idx (1, T).

    SDPA never materializes these weights, so we recompute them from the block's input.
    The active adapter is whatever the caller chose (see plot_attention)."""
    with torch.no_grad():
        if layer == 0:
            T = idx.size(1)
            x = gpt.transformer.wte(idx) + gpt.transformer.wpe(torch.arange(T))
        else:  # the block's input is the previous block's output
            x = gpt.body(idx, attn=attn).hidden[layer - 1]
        block = gpt.transformer.h[layer]
        C, nh = x.size(-1), gpt.config.n_head
        q, k, _ = block.attn.c_attn(block.ln_1(x)).split(C, dim=2)
        q = q.view(1, -1, nh, C // nh).transpose(1, 2)  # (1, nh, T, hs)
        k = k.view(1, -1, nh, C // nh).transpose(1, 2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(C // nh)  # (1, nh, T, T)
        mask = attention_mask(torch.ones_like(idx, dtype=torch.bool), idx.size(1), attn)
        return scores.masked_fill(~mask, float('-inf')).softmax(-1)[0]


def attention_inputs(out_dir, text, layer=0):
    """What plot_attention draws from, checked before anything is drawn: (model, gpt, meta, prompt,
    last), prompt the token ids of Bitune's prefix of the toy prompt text (all but its last token
    `last`)."""
    model, gpt, ckpt = model_from_checkpoint(os.path.join(out_dir, 'ckpt.pt'))
    meta, n_layer = ckpt['meta'], gpt.config.n_layer
    if not 0 <= layer < n_layer:
        raise ValueError(f"layer {layer}: the model has layers 0..{n_layer - 1}; give a LAYER "
                         f"from 0 to {n_layer - 1}")
    if meta.get('tokenizer') != 'char':
        raise ValueError(f"{out_dir}/ckpt.pt is not a toy checkpoint: attention pictures are "
                         f"drawn for toy checkpoints (one character per token)")
    # Bitune's prefix: the prompt minus its last token
    *prompt, last = toy.parse_prompt(text, meta)
    block_size = gpt.config.block_size
    if len(prompt) > block_size:
        data = len(''.join(text.split())) - 1  # the prompt's symbols but its one op
        most = data - (len(prompt) - block_size)
        raise ValueError(f"toy prompt {text!r}: Bitune's prefix of it is {len(prompt)} tokens, "
                         f"more than the model's block_size {block_size}; give a prompt of at "
                         f"most {most} data symbols")
    return model, gpt, meta, prompt, last


def plot_attention(out_dir, text, layer=0, inputs=None):
    """out_dir/attention.png: a toy prompt read causally (top) and bidirectionally (bottom),
    per head. For a Bitune checkpoint each reading uses its own adapter, exactly as Passes B
    and A do. inputs: attention_inputs(out_dir, text, layer), when already checked."""
    model, gpt, meta, prompt, last = inputs or attention_inputs(out_dir, text, layer)
    idx = torch.tensor([prompt])
    labels = [meta['itos'][t] for t in prompt]
    readings = [('causal', getattr(model, 'causal_adapter', None)),
                ('bidir', getattr(model, 'a_adapter', None))]
    weights = []
    for attn, name in readings:
        with adapter(gpt, name if name in adapter_kinds(gpt) else None):
            weights.append(attention_weights(gpt, idx, layer, attn))
        if not weights[-1].isfinite().all():  # never a picture of nan
            raise ValueError(f"{out_dir}/ckpt.pt gives attention weights that are not finite "
                             f"in layer {layer}; its weights are damaged: train the run again")
    nh = gpt.config.n_head
    fig, axes = plt.subplots(2, nh, figsize=(2.6 * nh + 1, 6), squeeze=False)
    for row, ((attn, name), w) in enumerate(zip(readings, weights)):
        for h in range(nh):
            ax = axes[row][h]
            im = ax.imshow(w[h].numpy(), vmin=0, vmax=1, cmap='viridis')
            ax.set_xticks(range(len(labels)), labels, fontsize=8)
            ax.set_yticks(range(len(labels)), labels, fontsize=8)
            ax.set_title(f"{'causal (Pass B)' if attn == 'causal' else 'bidirectional (Pass A)'}, "
                         f"head {h}", fontsize=9)
    fig.suptitle(f"layer {layer} attention weights on Bitune's prefix of {text!r}: "
                 f"the prompt minus its last token {meta['itos'][last]!r}\n"
                 f"(rows: queries, columns: keys; each row sums to 1)", fontsize=10)
    fig.tight_layout()
    # after the layout, beside every panel
    fig.colorbar(im, ax=axes, shrink=0.8, label='attention weight')
    return save_png(fig, os.path.join(out_dir, 'attention.png'))


def main(argv):
    if len(argv) not in (1, 2, 3) or (len(argv) == 3 and not argv[2].isdigit()):
        raise ValueError('usage: python utils/plot.py OUT_DIR ["31415 R" [LAYER]] '
                         '(LAYER: a layer\'s number, 0 for the first)')
    layer = int(argv[2]) if len(argv) == 3 else 0
    # the prompt and layer checked first: a mistake there is one line, with nothing drawn yet
    inputs = attention_inputs(argv[0], argv[1], layer) if len(argv) >= 2 else None
    for path in plot_run(argv[0]):
        print('wrote', path)
    if inputs:
        print('wrote', plot_attention(argv[0], argv[1], layer, inputs))


if __name__ == '__main__':
    # a missing folder, checkpoint or a bad prompt: one `error:` line
    runtime.run_main(lambda: main(sys.argv[1:]))
