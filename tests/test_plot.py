"""utils/plot.py: the attention weights it draws are real softmax rows with the right mask."""
import os

import torch

from utils.plot import attention_weights


def test_attention_weights_are_masked_softmax_rows(tiny_gpt):
    model = tiny_gpt()
    idx = torch.randint(0, 23, (1, 6))
    for layer in (0, 1):
        causal = attention_weights(model, idx, layer, 'causal')
        bidir = attention_weights(model, idx, layer, 'bidir')
        assert causal.shape == (2, 6, 6)  # (n_head, T, T)
        assert torch.allclose(causal.sum(-1), torch.ones(2, 6)) and torch.allclose(bidir.sum(-1), torch.ones(2, 6))
        assert causal.triu(1).abs().max() == 0  # no query looks ahead
        upper = torch.ones(6, 6, dtype=torch.bool).triu(1)
        assert bidir[:, upper].min() > 0        # every query sees every later key too


def test_plot_failures_are_one_error_line(tmp_path):
    import subprocess
    import sys
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'utils', 'plot.py')
    (tmp_path / 'run').mkdir()
    (tmp_path / 'run' / 'log.jsonl').write_text('{"iter": 0, "val_loss": 2.5}\n')
    for args, says in [([str(tmp_path / 'missing')], 'holds no log.jsonl'),
                       ([str(tmp_path / 'run'), '31415 R'], 'no checkpoint at'),
                       ([str(tmp_path / 'run'), '31415 R', 'one'], 'usage:')]:
        r = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and r.stderr.startswith('error: ') and says in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and 'Traceback' not in r.stderr
