"""
Pictures of a training run, drawn from its out_dir/log.jsonl:

    python plot.py out            # writes out/loss.png, out/metric.png (and out/alpha.png for Bitune)

train.py calls plot_run() at the end of every run; running this file redraws
the plots of any run, finished or not.
"""
import json
import os
import sys

import matplotlib
matplotlib.use('Agg')  # files only: works on a server with no display
import matplotlib.pyplot as plt  # noqa: E402


def read_log(out_dir):
    with open(os.path.join(out_dir, 'log.jsonl')) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_run(out_dir):
    """Draw every plot the log has data for; returns the paths written."""
    rows = read_log(out_dir)
    if not rows:
        return []
    it = [r['iter'] for r in rows]
    written = []

    def save(fig, name):
        path = os.path.join(out_dir, name)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    # losses; for BAI the awareness loss sits beside the autoregressive one
    has_bai = any('bai_loss' in r for r in rows)
    fig, axes = plt.subplots(1, 2 if has_bai else 1, figsize=(11 if has_bai else 6, 4), squeeze=False)
    ax = axes[0][0]
    ax.plot(it, [r.get('train_loss', float('nan')) for r in rows], label='train')  # none at iteration 0
    ax.plot(it, [r['val_loss'] for r in rows], label='val')
    ax.set(xlabel='iteration', ylabel='cross-entropy on answer tokens', yscale='log', title='loss')
    ax.legend()
    if has_bai:
        ax = axes[0][1]
        ax.plot(it, [r.get('bai_loss', float('nan')) for r in rows], color='C2', label='awareness loss (train)')
        ax.set(xlabel='iteration', ylabel='BAI loss', title='BAI awareness loss and its weight')
        twin = ax.twinx()
        twin.plot(it, [r.get('bai_weight', float('nan')) for r in rows], color='C3', ls='--', label='weight')
        twin.set_ylabel('lambda * Lambda(t)')
        ax.legend(loc='upper right')
    save(fig, 'loss.png')

    # the task metric: exact match (overall and per operation) or ROUGE
    keys = [k for k in rows[-1] if k == 'exact_match' or k.startswith('em_') or k.startswith('rouge')]
    if keys:
        fig, ax = plt.subplots(figsize=(6, 4))
        for k in keys:
            ax.plot(it, [r.get(k, float('nan')) for r in rows], label=k, lw=2.5 if k == 'exact_match' else 1.2)
        ax.set(xlabel='iteration', ylabel='percent', title='task metric (greedy generation on val)')
        ax.legend()
        save(fig, 'metric.png')

    # Bitune: every layer's mixing coefficient, alpha = weight of the bidirectional side
    if 'alpha_k' in rows[-1]:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
        for ax, key in zip(axes, ('alpha_k', 'alpha_v')):
            for layer in range(len(rows[-1][key])):
                ax.plot(it, [r[key][layer] for r in rows], label=f'layer {layer}')
            ax.axhline(0.5, color='grey', lw=0.5)
            ax.set(xlabel='iteration', title=f'Bitune {key} (1 = bidirectional pass only)', ylim=(0, 1))
        axes[0].set_ylabel('alpha')
        axes[1].legend(fontsize=8)
        save(fig, 'alpha.png')
    return written


if __name__ == '__main__':
    if len(sys.argv) != 2:
        sys.exit("usage: python plot.py OUT_DIR")
    for path in plot_run(sys.argv[1]):
        print('wrote', path)
