"""
Sample from a trained model, or from GPT-2 itself.

    # a toy model: data, then the operation
    python sample.py --ckpt=out/ckpt.pt --start="31415 R"
    # several prompts, one batch
    python sample.py --ckpt=out/ckpt.pt --start="31415 R, 2718 S"
    # summarize a dialogue
    python sample.py --ckpt=out-dialogsum/ckpt.pt --start=FILE:dialogue.txt
    python sample.py --init_from=gpt2 --start="The meaning of life is" \
        --temperature=0.8 --num_samples=3

A Bitune checkpoint generates with Bitune's two-pass prefill automatically: the
model it rebuilds has the same generate() as a plain GPT. BAI changes nothing at
inference, so a BAI checkpoint samples like any other.
"""
from utils import runtime  # first, so Ctrl-C while the rest loads prints one line
if __name__ == '__main__':
    runtime.catch_signals("nothing was written; run it again")

import os
import sys

import torch

from model import GPT
from utils.checkpoint import GPT2_NAMES, model_from_checkpoint
from configurator import CORES, SEED, check_ranges, configure, pick_device
from data.tasks import collate_prompts, get_tokenizer
from data.toy import toy

ckpt = ''               # a checkpoint written by train.py ...
init_from = ''          # ... or a GPT-2 name ('gpt2', ...) or directory, to sample plain GPT-2
start = "31415 R"       # the prompt(s); FILE:path reads them from a file
num_samples = 1         # samples per prompt
max_new_tokens = 0      # 0 = 20 (toy) / the task's max_answer (summaries) / 100 (GPT-2)
temperature = 0.0       # 0 = greedy; higher = more random (never below 0)
top_k = 0               # keep only the k most likely tokens when sampling; 0 = all
seed = 1337
device = 'cpu'
threads = 0             # torch CPU threads; 0 = torch's default (one per core)
DEFAULTS = {k: v for k, v in dict(globals()).items()
            if not k.startswith('_') and isinstance(v, (int, float, str))}


def load(c):
    """(model, meta) from a checkpoint or from GPT-2."""
    if c.ckpt and c.init_from:
        raise ValueError("give --ckpt or --init_from, not both: sample.py samples from one model")
    if c.ckpt:
        model, _, saved = model_from_checkpoint(c.ckpt, c.device)
        return model, saved['meta']
    if c.init_from:
        if c.init_from not in GPT2_NAMES and not os.path.isdir(c.init_from):
            raise ValueError(f"--init_from={c.init_from!r}: "
                             f"a GPT-2 name {GPT2_NAMES} or a directory")
        meta = {'name': 'gpt2', 'tokenizer': 'gpt2', 'eos': 50256, 'pad': 50256}
        return GPT.from_pretrained(c.init_from).to(c.device), meta
    raise ValueError("say what to sample from: --ckpt=out/ckpt.pt or --init_from=gpt2")


def prompts_from(c, meta):
    """A list of (text shown, prompt token ids)."""
    text = c.start
    if text.startswith('FILE:'):
        if not os.path.isfile(text[5:]):
            what = 'is not a regular file' if os.path.exists(text[5:]) else 'no such file'
            raise FileNotFoundError(f"--start={text}: {what} "
                                    f"(FILE: reads the prompt from a text file)")
        try:
            with open(text[5:], encoding='utf-8') as f:
                text = f.read()
        except UnicodeDecodeError:
            raise ValueError(f"--start={text}: not a UTF-8 text file; "
                             f"save the prompt as plain text") from None
    if not text.strip():
        raise ValueError("the prompt is empty: give one with --start=... or --start=FILE:path")
    # a toy task: "31415 R" per prompt, separated by commas or lines
    if meta['tokenizer'] == 'char':
        parts = [p.strip() for p in text.replace('\n', ',').split(',') if p.strip()]
        if not parts:
            raise ValueError(f"--start={c.start!r} holds no prompt; write e.g. --start='31415 R'")
        return [(p, toy.parse_prompt(p, meta)) for p in parts]
    tok = get_tokenizer(meta)
    # a summarization model: wrap the text the way its training prompts were
    if 'template' in meta:
        text = meta['template'].format(text=text.strip())
    return [(text, tok.encode(text, allowed_special={'<|endoftext|>'}))]


def main(argv=None):
    from types import SimpleNamespace
    c = SimpleNamespace(**configure(DEFAULTS, sys.argv[1:] if argv is None else argv))
    check_ranges(vars(c), {'>= 0': 'temperature top_k max_new_tokens', 'in 1..1000': 'num_samples',
                           SEED: 'seed', CORES: 'threads'})
    c.device = pick_device(c.device)
    if c.threads > 0:
        torch.set_num_threads(c.threads)
    model, meta = load(c)
    model.eval()
    prompts = prompts_from(c, meta)
    examples = [{'prompt': ids} for _, ids in prompts for _ in range(c.num_samples)]
    idx, valid = collate_prompts(examples, c.device, pad_id=meta['pad'])
    block = model.config.block_size
    n_new = (c.max_new_tokens or meta.get('max_answer')
             or (20 if meta['tokenizer'] == 'char' else 100))
    n_new = min(n_new, block - idx.size(1))
    if n_new < 1:
        raise ValueError(f"the prompt has {idx.size(1)} tokens: "
                         f"no room left in block_size {block}; shorten it")
    # sampling never touches the global RNG
    g = torch.Generator(device=c.device).manual_seed(c.seed)
    out = model.generate(idx, n_new, temperature=c.temperature, top_k=c.top_k or None, valid=valid,
                         stop_token=meta['eos'], generator=g)
    tok = get_tokenizer(meta) if meta['tokenizer'] != 'char' else None
    results = []
    for (shown, _), row in zip([p for p in prompts for _ in range(c.num_samples)],
                               out[:, idx.size(1):].tolist()):
        row = row[:row.index(meta['eos'])] if meta['eos'] in row else row
        answer = toy.format_answer(row, meta) if tok is None else tok.decode(row)
        results.append(answer)
        print(f"{shown} -> {answer}" if tok is None else f"{shown}{answer}\n---------------")
    return results


if __name__ == '__main__':
    # a bad setting, prompt or file: one line `error: ...` that says what to do
    runtime.run_main(main)
