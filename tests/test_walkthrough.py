"""walkthrough.py: the trace of one batch prints the real tensors of Bitune's and BAI's steps, and
its masks figure is drawn from the masks GPT.forward built."""
import os

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
