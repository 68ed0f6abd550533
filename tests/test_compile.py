"""train.py --compile=True: the blocks are compiled for training, into a handful of graphs, with
eager's losses.

The graph counts use dynamo's own counters with the 'eager' backend (set here on
nn.Module.compile): dynamo traces, guards and recompiles exactly as with inductor, without
inductor's minutes of code generation."""
import functools

import pytest
import torch
from torch._dynamo.utils import counters

from test_train import read_log, run

METHODS = ['causal', 'bitune', 'bai', 'bitune_bai']
# widths change every batch
VARYING = ['--toy_min_len=2', '--toy_max_len=10', '--n_layer=2', '--batch_size=4']


def compiled_run(tmp_path, monkeypatch, method, *args, name='compiled'):
    monkeypatch.setattr(torch.nn.Module, 'compile',
                        functools.partialmethod(torch.nn.Module.compile, backend='eager'))
    torch._dynamo.reset()
    counters.clear()
    return run(tmp_path, f'--method={method}', '--compile=True', *VARYING, *args, name=name)


@pytest.mark.parametrize('method', METHODS)
def test_compiled_training_builds_a_handful_of_graphs_with_eagers_losses(
        tmp_path, monkeypatch, method):
    args = ['--max_iters=30', '--eval_interval=15']
    _, compiled = compiled_run(tmp_path, monkeypatch, method, *args)
    # evaluation (generation) stays eager and the blocks take any length (dynamic shapes): without
    # these, a graph per batch width and per decoding step. Bitune's three passes call the blocks
    # three ways (mask and adapter), the others one way.
    assert 1 <= counters['stats']['unique_graphs'] <= (3 if 'bitune' in method else 1), \
        dict(counters['stats'])
    # the compiled blocks compute eager's losses, to float rounding
    _, eager = run(tmp_path, f'--method={method}', *VARYING, *args, name='eager')
    for e, c in zip(read_log(eager), read_log(compiled), strict=True):
        for key in ('train_loss', 'bai_loss', 'val_loss'):
            if key in e:
                assert c[key] == pytest.approx(e[key], rel=1e-5), key
