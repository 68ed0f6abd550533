"""
Evaluation metrics: ROUGE-1 / ROUGE-2 / ROUGE-L F-measure and exact match.

ROUGE (Lin, 2004, "ROUGE: A Package for Automatic Evaluation of Summaries") is
what the Bitune (arXiv 2405.14862) and BAI (arXiv 2408.13959) style summarization
experiments report. It is written here from scratch to behave like the default
settings of the widely used `rouge-score` package, so numbers are comparable:
  - tokenize: lowercase, every character outside [a-z0-9] becomes a space, split
    on whitespace; no stemming.
  - ROUGE-N: overlap of n-gram multisets, a shared n-gram counted at most as often
    as it occurs in each side ("clipped"); P = overlap / #pred n-grams,
    R = overlap / #ref n-grams, F = 2PR / (P + R).
  - ROUGE-L: P and R from the longest common subsequence of the two token lists.
  - an empty prediction or reference (after tokenizing) scores 0.
  - several references: the max F over references, separately per metric
    (what rouge-score's score_multi does).

Usage:
    from metrics import rouge, corpus_rouge, exact_match
    rouge("the cat sat", ["a cat sat down"])  # {'rouge1': ..., 'rouge2': ..., 'rougeL': ...} in [0, 1]
    corpus_rouge(preds, refs)                 # mean over examples, in percent
"""
import re
from collections import Counter

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


def exact_match(pred, truth):
    """1.0 if the strings are equal after stripping surrounding whitespace, else 0.0."""
    return float(pred.strip() == truth.strip())


def corpus_rouge(preds, refs):
    """
    Mean ROUGE over a corpus, in percent (the way papers report it).
    preds: list of strings; refs: list of the same length, each a string or a list of strings.
    """
    if len(preds) != len(refs):
        raise ValueError(f"got {len(preds)} predictions but {len(refs)} reference entries; they must pair up")
    if len(preds) == 0:
        raise ValueError("corpus_rouge() needs at least one example")
    total = dict.fromkeys(METRICS, 0.0)
    for pred, ref in zip(preds, refs):
        for k, v in rouge(pred, ref).items():
            total[k] += v
    return {k: 100.0 * v / len(preds) for k, v in total.items()}


def corpus_exact_match(preds, truths):
    """Percentage of predictions that exactly match their truth (see exact_match)."""
    if len(preds) != len(truths) or len(preds) == 0:
        raise ValueError(f"need equally many, and at least one, predictions and truths; "
                         f"got {len(preds)} and {len(truths)}")
    return 100.0 * sum(exact_match(p, t) for p, t in zip(preds, truths)) / len(preds)
