"""utils/plot.py: the attention weights it draws are real softmax rows with the right mask, and its
failures are one line."""
import pytest
import torch

from utils.plot import attention_weights


def test_attention_weights_are_masked_softmax_rows(tiny_gpt):
    model = tiny_gpt()
    idx = torch.randint(0, 23, (1, 6))
    for layer in (0, 1):
        causal = attention_weights(model, idx, layer, 'causal')
        bidir = attention_weights(model, idx, layer, 'bidir')
        assert causal.shape == (2, 6, 6)  # (n_head, T, T)
        assert (torch.allclose(causal.sum(-1), torch.ones(2, 6))
                and torch.allclose(bidir.sum(-1), torch.ones(2, 6)))
        assert causal.triu(1).abs().max() == 0  # no query looks ahead
        upper = torch.ones(6, 6, dtype=torch.bool).triu(1)
        assert bidir[:, upper].min() > 0        # every query sees every later key too


def test_plot_failures_are_one_error_line(tmp_path, capsys):
    """What `python utils/plot.py` does: run_main(main) makes each failure one `error:` line."""
    from utils.runtime import run_main
    from utils import plot
    (tmp_path / 'run').mkdir()
    (tmp_path / 'run' / 'log.jsonl').write_text('{"iter": 0, "val_loss": 2.5}\n')
    for args, says in [([str(tmp_path / 'missing')], 'holds no log.jsonl'),
                       ([str(tmp_path / 'run'), '31415 R'], 'no checkpoint at'),
                       ([str(tmp_path / 'run'), '31415 R', 'one'], 'usage:')]:
        with pytest.raises(SystemExit) as e:
            run_main(lambda: plot.main(args))
        err = capsys.readouterr().err
        assert e.value.code == 1 and err.startswith('error: ') and says in err, err
        assert len(err.strip().splitlines()) == 1
