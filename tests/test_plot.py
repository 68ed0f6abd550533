"""utils/plot.py: the attention weights it draws are real softmax rows with the right mask, and its
failures are one line."""
import os

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


# ---- every failure a user can cause is one line; a log with gaps is drawn without them

TINY = ['--method=bitune', '--n_layer=1', '--n_head=2', '--n_embd=16', '--block_size=32',
        '--batch_size=8', '--eval_iters=1', '--eval_examples=4', '--toy_n_train=64',
        '--toy_n_val=8', '--toy_max_len=5', '--warmup_iters=1', '--max_iters=2',
        '--eval_interval=2', '--device=cpu']


@pytest.fixture(scope='module')
def toy_run(tmp_path_factory):
    """A finished tiny Bitune run on the toy task (one layer, block_size 32): its out_dir."""
    import train
    out = tmp_path_factory.mktemp('plot') / 'run'
    train.main(TINY + [f'--out_dir={out}'])
    return out


def error_line(args, capsys):
    """What `python utils/plot.py ARGS` prints on stderr, asserted to be one `error:` line."""
    from utils.runtime import run_main
    from utils import plot
    with pytest.raises(SystemExit) as e:
        run_main(lambda: plot.main([str(a) for a in args]))
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.startswith('error: ') and len(err.strip().splitlines()) == 1
    assert 'looks like a bug' not in err, err
    return err.strip()


def log_folder(tmp_path, text, name='run'):
    """A run folder holding only a log.jsonl of text (str or bytes)."""
    (tmp_path / name).mkdir()
    (tmp_path / name / 'log.jsonl').write_bytes(text if isinstance(text, bytes) else text.encode())
    return tmp_path / name


@pytest.fixture
def drawn(monkeypatch):
    """The figures plot_run would save, by file name, kept open instead."""
    from utils import plot
    kept = {}

    def keep(fig, path, dpi=100):
        kept[os.path.basename(path)] = fig
        return path
    monkeypatch.setattr(plot, 'save_png', keep)
    yield kept
    for fig in kept.values():
        plot.plt.close(fig)


def curves(fig):
    """{label: (x, y)} of every labelled line of the figure."""
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
            for ax in fig.axes for line in ax.get_lines() if not line.get_label().startswith('_')}


def test_a_log_without_val_loss_draws_what_it_has(tmp_path, drawn):
    from utils.plot import plot_run
    out = log_folder(tmp_path, '{"iter": 0, "exact_match": 1.0}\n'
                               '{"iter": 2, "train_loss": 2.5, "exact_match": 3.0}\n')
    assert [os.path.basename(p) for p in plot_run(str(out))] == ['loss.png', 'metric.png']
    assert curves(drawn['loss.png']) == {'train': ([2], [2.5])}  # no val line, no KeyError
    assert curves(drawn['metric.png']) == {'exact_match': ([0, 2], [1.0, 3.0])}


def test_missing_and_non_finite_points_are_skipped_never_drawn_as_nan(tmp_path, drawn):
    from utils.plot import plot_run
    out = log_folder(tmp_path, '{"iter": 0, "val_loss": NaN, "exact_match": "x", '
                               '"alpha_k": [0.5, Infinity]}\n'
                               '{"iter": 2, "val_loss": 2.4, "exact_match": 3.0, '
                               '"alpha_k": [0.6, 0.4], "alpha_v": "?"}\n')
    plot_run(str(out))
    assert curves(drawn['loss.png']) == {'val': ([2], [2.4])}
    assert curves(drawn['metric.png']) == {'exact_match': ([2], [3.0])}
    assert curves(drawn['alpha.png']) == {'layer 0': ([0, 2], [0.5, 0.6]),
                                          'layer 1': ([2], [0.4])}


def test_an_empty_or_half_written_log_says_there_is_nothing_to_draw_yet(tmp_path, capsys):
    for name, text in (('empty', ''), ('half', '{"iter": 0, "val_lo')):
        out = log_folder(tmp_path, text, name)
        assert 'log.jsonl has no rows yet' in error_line([out], capsys)


def test_a_log_of_another_kind_is_one_line(tmp_path, capsys):
    out = log_folder(tmp_path, '{"iter": 0, "tokens": 5}\n')
    assert 'no loss, task metric or alpha to draw' in error_line([out], capsys)


def test_a_log_that_is_not_utf8_is_one_line(tmp_path, capsys):
    out = log_folder(tmp_path, b'\xff\xfe{"iter": 0}\n')
    assert 'not UTF-8' in error_line([out], capsys)


def test_a_prompt_longer_than_block_size_names_its_length_and_block_size(toy_run, capsys):
    for f in ('loss.png', 'metric.png', 'alpha.png'):
        (toy_run / f).unlink(missing_ok=True)
    err = error_line([toy_run, '1' * 31 + ' R'], capsys)
    assert "Bitune's prefix of it is 33 tokens, more than the model's block_size 32" in err
    assert 'at most 30 data symbols' in err
    assert not (toy_run / 'loss.png').exists()  # checked before anything is drawn


def test_a_prompt_with_an_unknown_symbol_is_one_line(toy_run, capsys):
    assert "data must be one or more of '0123456789', got 'a'" in \
        error_line([toy_run, '314a5 R'], capsys)
    assert 'write data then one op' in error_line([toy_run, '31415 X'], capsys)


def test_a_layer_out_of_range_is_one_line(toy_run, capsys):
    assert 'layer 1: the model has layers 0..0; give a LAYER from 0 to 0' in \
        error_line([toy_run, '31415 R', 1], capsys)
    assert 'usage:' in error_line([toy_run, '31415 R', -1], capsys)


def test_a_good_prompt_draws_the_attention_picture(toy_run, capsys):
    from utils import plot
    plot.main([str(toy_run), '1' * 30 + ' R', '0'])
    assert 'attention.png' in capsys.readouterr().out
    assert (toy_run / 'attention.png').stat().st_size > 0
