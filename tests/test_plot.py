"""utils/plot.py: the attention weights it draws are real softmax rows with the right mask."""
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
