"""
Scoring a model by what it generates: batched greedy decoding with the KV cache
on a fixed set of examples, then exact match (toy tasks, per operation) or
ROUGE (summarization). train.py calls evaluate_task() at every evaluation.

Any model with GPT.generate's signature works: a GPT, or bitune.Bitune, whose
generate() runs the two-pass prefill first, so nothing here knows the method.

ROUGE-1 / ROUGE-2 / ROUGE-L F-measure (Lin, 2004, "ROUGE: A Package for
Automatic Evaluation of Summaries") is written from scratch to behave like the
default settings of the `rouge-score` package, so numbers are comparable:
  - tokenize: lowercase, every character outside [a-z0-9] becomes a space, split
    on whitespace; no stemming.
  - ROUGE-N: overlap of n-gram multisets, a shared n-gram counted at most as often
    as it occurs in each side ("clipped"); P = overlap / #pred n-grams,
    R = overlap / #ref n-grams, F = 2PR / (P + R).
  - ROUGE-L: P and R from the longest common subsequence of the two token lists.
  - an empty prediction or reference (after tokenizing) scores 0.
  - several references: the max F over references, separately per metric
    (what rouge-score's score_multi does).

    rouge("the cat sat", ["a cat sat down"])  # {'rouge1': .., 'rouge2': .., 'rougeL': ..} in [0, 1]
    corpus_rouge(preds, refs)                 # mean over examples, in percent
"""
import re
from collections import Counter

import torch

from data.tasks import collate_prompts, get_tokenizer
from data.toy import toy

# -----------------------------------------------------------------------------
# ROUGE

METRICS = ('rouge1', 'rouge2', 'rougeL')


def tokenize(text):
    """'Hello, World!' -> ['hello', 'world']. The digits stay: '3.5' -> ['3', '5']."""
    return re.sub(r'[^a-z0-9]+', ' ', text.lower()).split()


def _f1(overlap, n_pred, n_ref):
    # max(.., 1) makes an empty side give P or R = 0 instead of a division error
    p, r = overlap / max(n_pred, 1), overlap / max(n_ref, 1)
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def rouge_n(pred_tokens, ref_tokens, n):
    """ROUGE-N F-measure of two token lists."""
    pred = Counter(tuple(pred_tokens[i:i + n]) for i in range(len(pred_tokens) - n + 1))
    ref = Counter(tuple(ref_tokens[i:i + n]) for i in range(len(ref_tokens) - n + 1))
    overlap = sum((pred & ref).values())  # Counter '&' takes the min count: the clipping
    return _f1(overlap, sum(pred.values()), sum(ref.values()))


def lcs_length(a, b):
    """Length of the longest common subsequence, O(len(a) * len(b)) time, one row of memory."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(pred_tokens, ref_tokens):
    """ROUGE-L F-measure (beta = 1) of two token lists."""
    return _f1(lcs_length(pred_tokens, ref_tokens), len(pred_tokens), len(ref_tokens))


def rouge(pred, refs):
    """
    ROUGE F-measures of one prediction string against one reference string or a list
    of them. Returns {'rouge1', 'rouge2', 'rougeL'} as fractions in [0, 1]; with
    several references each metric is the max over references.
    """
    if isinstance(refs, str):
        refs = [refs]
    if len(refs) == 0:
        raise ValueError("rouge() needs at least one reference string, got an empty list")
    p = tokenize(pred)
    best = dict.fromkeys(METRICS, 0.0)
    for ref in refs:
        r = tokenize(ref)
        scores = {'rouge1': rouge_n(p, r, 1), 'rouge2': rouge_n(p, r, 2), 'rougeL': rouge_l(p, r)}
        best = {k: max(best[k], scores[k]) for k in METRICS}
    return best


def corpus_rouge(preds, refs):
    """
    Mean ROUGE over a corpus, in percent (the way papers report it).
    preds: list of strings; refs: list of the same length, each a string or a list of strings.
    """
    if len(preds) != len(refs):
        raise ValueError(f"got {len(preds)} predictions but {len(refs)} reference entries; "
                         f"they must pair up")
    if len(preds) == 0:
        raise ValueError("corpus_rouge() needs at least one example")
    total = dict.fromkeys(METRICS, 0.0)
    for pred, ref in zip(preds, refs):
        for k, v in rouge(pred, ref).items():
            total[k] += v
    return {k: 100.0 * v / len(preds) for k, v in total.items()}

# -----------------------------------------------------------------------------
# Generation and scores


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
            raise ValueError(f"a prompt of {idx.size(1)} tokens leaves no room to generate in "
                             f"block_size {block_size}; "
                             f"truncate the prompts (see the dataset's prepare.py)")
        out = model.generate(idx, n_new, temperature=0, valid=valid, stop_token=meta['eos'])
        for row in out[:, idx.size(1):].tolist():
            answers.append(row[:row.index(meta['eos']) + 1] if meta['eos'] in row else row)
    model.train(was_training)
    return answers


def evaluate_task(model, examples, meta, device, batch_size=64, max_new_tokens=None, n_show=3):
    """{'metric name': value, ...} and a few printable lines (mistakes, or summaries next to
    references)."""
    answers = generate_answers(model, examples, meta, device, batch_size, max_new_tokens)
    if meta['metric'] == 'exact_match':
        r = toy.exact_match_by_op(examples, answers, meta, n_show=n_show)
        # percent, like ROUGE: 'exact_match' overall, 'em_R' etc. per operation
        scores = {'exact_match': 100 * r['acc'],
                  **{f"em_{op}": 100 * acc for op, acc in r['per_op'].items()}}
        return scores, r['mistakes']
    tok = get_tokenizer(meta)
    eos = meta['eos']
    preds = [tok.decode([t for t in a if t != eos]).strip() for a in answers]
    refs = [ex.get('refs') or [tok.decode([t for t in ex['answer'] if t != eos]).strip()]
            for ex in examples]
    scores = corpus_rouge(preds, refs)
    lines = [f"model: {p!r}\n  ref: {r[0]!r}" for p, r in zip(preds[:n_show], refs[:n_show])]
    return scores, lines
