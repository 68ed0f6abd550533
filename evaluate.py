"""
Scoring a model by what it GENERATES: batched greedy decoding with the KV cache
on a fixed set of examples, then exact match (toy tasks, per operation) or
ROUGE (summarization). Used by train.py at every evaluation and by the labs.

Any model with GPT.generate's signature works: a GPT, or bitune.Bitune, whose
generate() runs the two-pass prefill first. So nothing here knows the method.
"""
import torch

import metrics
from tasks import collate_prompts, get_tokenizer, toy_module


@torch.no_grad()
def generate_answers(model, examples, meta, device, batch_size=64, max_new_tokens=None):
    """Greedy answers, one list of token ids per example, cut after the first end token."""
    block_size = model.config.block_size  # a GPT's, or the GPT's inside Bitune
    if max_new_tokens is None:  # what prepare.py allowed for answers, else the longest true answer
        max_new_tokens = meta.get('max_answer') or max(len(ex['answer']) for ex in examples)
    was_training = model.training
    model.eval()
    answers = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        idx, valid = collate_prompts(chunk, device, pad_id=meta['pad'])
        n_new = min(max_new_tokens, block_size - idx.size(1))
        if n_new < 1:
            raise ValueError(f"a prompt of {idx.size(1)} tokens leaves no room to generate in block_size "
                             f"{block_size}; truncate the prompts (see the dataset's prepare.py)")
        out = model.generate(idx, n_new, temperature=0, valid=valid, stop_token=meta['eos'])
        for row in out[:, idx.size(1):].tolist():
            answers.append(row[:row.index(meta['eos']) + 1] if meta['eos'] in row else row)
    model.train(was_training)
    return answers


def evaluate_task(model, examples, meta, device, batch_size=64, max_new_tokens=None, n_show=3):
    """{'metric name': value, ...} and a few printable lines (mistakes, or summaries next to references)."""
    answers = generate_answers(model, examples, meta, device, batch_size, max_new_tokens)
    if meta['metric'] == 'exact_match':
        r = toy_module().exact_match_by_op(examples, answers, meta, n_show=n_show)
        # percent, like ROUGE: 'exact_match' overall, 'em_R' etc. per operation
        scores = {'exact_match': 100 * r['acc'], **{f"em_{op}": 100 * acc for op, acc in r['per_op'].items()}}
        return scores, r['mistakes']
    tok = get_tokenizer(meta)
    eos = meta['eos']
    preds = [tok.decode([t for t in a if t != eos]).strip() for a in answers]
    refs = [ex.get('refs') or [tok.decode([t for t in ex['answer'] if t != eos]).strip()] for ex in examples]
    scores = metrics.corpus_rouge(preds, refs)
    lines = [f"model: {p!r}\n  ref: {r[0]!r}" for p, r in zip(preds[:n_show], refs[:n_show])]
    return scores, lines
