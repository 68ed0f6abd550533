"""walkthrough.py: the trace of one batch prints the real tensors of Bitune's and BAI's steps, and
its masks figure is drawn from the masks GPT.body built; it runs on any toy checkpoint."""
import os

import pytest

import walkthrough


def test_walkthrough_traces_the_real_passes(tmp_path, capsys):
    png = tmp_path / 'passes.png'
    # a random 2-layer model; the asserts inside check the pieces add up
    walkthrough.main([f'--plot={png}'])
    out = capsys.readouterr().out
    # the prefix drops each prompt's last token: row 0 (7 tokens) is real on 6 of the 8 columns
    assert ("row 0  ^3141R..  prefix_valid 11111100" in out
            and out.startswith("A random GPT, 2 layers"))
    assert "each (2, 2, 8, 8) = (batch, heads, prefix columns, head size)" in out
    assert "alpha_k 0.500 0.500   alpha_v 0.500 0.500" in out  # theta starts at theta_init
    assert "layer 0  0.0000 0.0000 0.0000" in out  # a fresh LoRA adds nothing before attention
    # Pass C reads '=' and the answer without '$', and predicts the answer with '$'
    assert ("row 0  tokens =1413..  pos  6  7  8  9 10 11 12  "
            "targets 1413$..  key valid 11111100|1111100") in out
    # padding pivots get 0
    assert "1. pivots E (2, 9, 16): the output of block 0" in out and "0.000 0.000" in out
    assert os.path.getsize(png) > 10_000


def test_walkthrough_restores_what_it_wraps(tmp_path):
    import bai
    import model
    before = (model.attention_mask, bai.pivots, bai.equalize, bai.awareness_loss, bai.answer_tokens)
    walkthrough.main([])
    assert before == (model.attention_mask, bai.pivots, bai.equalize, bai.awareness_loss,
                      bai.answer_tokens)


def toy_checkpoint(path, **settings):
    """A checkpoint as train.py writes it, of an untrained model with these settings (no training:
    the walkthrough only needs a model of the right kind)."""
    import torch
    from data.tasks import task_from_config
    from model import configure_optimizers
    from train import DEFAULTS
    from utils.checkpoint import build_model, save_run
    cfg = {**DEFAULTS, 'n_layer': 2, 'n_head': 2, 'n_embd': 16, 'toy_n_train': 64, 'toy_n_val': 8,
           'toy_min_len': 2, 'toy_max_len': 4, **settings}
    meta = task_from_config(cfg)['meta']
    model, gpt = build_model(cfg, meta)
    opt = configure_optimizers(model, 0.1, 1e-3, (0.9, 0.99), 'cpu')
    save_run(str(path), model, gpt, opt, 0, cfg, meta, torch.Generator())
    return str(path)


@pytest.mark.parametrize('settings, expect', [
    ({'n_layer': 1}, "1. pivots E (2, 9, 16): the final state (after ln_f)"),
    ({'block_size': 12}, "row 1  idx ^2718S=1278$"),
    ({'toy_n_symbols': 5, 'toy_ops': 'RD'}, "row 1  idx ^221323D=213$"),
    ({'peft': 'lora'}, "3. Pass B: causal mask, adapter 'causal' (lora)"),
    ({'peft': 'dora'}, "2. Pass A: bidirectional mask, adapter 'bidir' (dora)"),
    ({'peft': 'ia3'}, "keys, adapter 'causal' (ia3)"),
    ({'bitune_variant': 'naive'}, "3. Pass B: none in variant 'naive'"),
    ({'bitune_variant': 'only_causal'}, "2. Pass A: causal mask"),
    ({'method': 'bai'}, "Bitune: not this model's method"),
    ({'method': 'bai', 'peft': 'lora'}, "one causal forward, adapter 'causal' (lora)"),
    ({'method': 'bitune_bai', 'bai_layer': 0}, "1. pivots E (2, 9, 16): the output of block 0"),
], ids=lambda x: '-'.join(f'{k}={v}' for k, v in x.items()) if isinstance(x, dict) else None)
def test_walkthrough_runs_on_any_toy_checkpoint_and_names_each_pass_adapter(tmp_path, capsys,
                                                                             settings, expect):
    ckpt = toy_checkpoint(tmp_path / 'ckpt.pt', **settings)
    walkthrough.main([f'--ckpt={ckpt}'])
    out = capsys.readouterr().out
    assert expect in out, out
    assert "adapter None" not in out and "(the base weights)" not in out.replace(
        "no adapter (the base weights)", "")


def test_walkthrough_refuses_what_it_cannot_trace_in_one_line_naming_its_option(tmp_path):
    ckpt = toy_checkpoint(tmp_path / 'ckpt.pt', method='causal')
    with pytest.raises(ValueError, match=r"--plot draws Bitune's passes, and --ckpt=.* 'causal'"):
        walkthrough.main([f'--ckpt={ckpt}', f'--plot={tmp_path}/p.png'])
    small = toy_checkpoint(tmp_path / 'small.pt', block_size=7)
    with pytest.raises(ValueError, match='block_size 7 is too small.*pass --ckpt a model'):
        walkthrough.main([f'--ckpt={small}'])
