"""
Tests for utils/evaluate.py: ROUGE-1/2/L F-measure, on cases worked out by hand.
Run: python -m pytest -q tests/test_evaluate.py

Besides these hand-worked cases, metrics.rouge was cross-checked once against the
`rouge-score` package (RougeScorer(['rouge1','rouge2','rougeL']).score_multi, default
options) on 500 random strings with punctuation, case, repeats and non-ASCII letters,
plus 100 DialogSum test summaries: the largest difference was 0.0. The project does
not depend on that package.
"""
import pytest

from utils.evaluate import corpus_rouge, lcs_length, rouge, tokenize


def approx(d):
    return {k: pytest.approx(v) for k, v in d.items()}


def test_tokenize_lowercases_and_splits_on_non_alphanumerics():
    assert tokenize("Hello, WORLD!") == ['hello', 'world']
    # apostrophes, '#', ':' and '.' all become spaces, digits stay
    assert tokenize("#Person1#: don't pay 3.5") == ['person1', 'don', 't', 'pay', '3', '5']
    assert tokenize("naïve café") == ['na', 've', 'caf']  # non-ASCII letters are separators too
    assert tokenize(" \n!? ") == []


def test_rouge_basic_overlap():
    # pred: the cat sat on the mat    ref: the cat is on the mat    (6 tokens each)
    # unigrams: the x2, cat, on, mat shared -> 5; P = R = 5/6
    # bigrams (5 each): the-cat, on-the, the-mat shared -> 3; P = R = 3/5
    # LCS: the cat on the mat -> 5; P = R = 5/6
    assert rouge("the cat sat on the mat", "the cat is on the mat") == \
        approx({'rouge1': 5 / 6, 'rouge2': 3 / 5, 'rougeL': 5 / 6})


def test_rouge_ignores_case_and_punctuation():
    assert rouge("Hello, WORLD!", "hello world") == approx({'rouge1': 1, 'rouge2': 1, 'rougeL': 1})


def test_rouge_clips_repeated_ngrams():
    # pred: the the the the (4)   ref: the cat (2)
    # unigram "the" counts min(4, 1) = 1: P = 1/4, R = 1/2, F = 2 * (1/8) / (3/4) = 1/3
    # bigrams: the-the x3 vs the-cat -> 0
    # LCS = 1 -> same P, R as unigrams -> 1/3
    assert rouge("the the the the", "the cat") == approx({'rouge1': 1 / 3, 'rouge2': 0,
                                                          'rougeL': 1 / 3})


def test_rouge_l_rewards_order_not_adjacency():
    # pred: a b c d   ref: a c b d
    # unigrams all shared -> 1; bigrams ab, bc, cd vs ac, cb, bd -> 0; LCS "a b d" = 3 -> 3/4
    assert rouge("a b c d", "a c b d") == approx({'rouge1': 1, 'rouge2': 0, 'rougeL': 3 / 4})


def test_lcs_length():
    assert lcs_length(list("abcbdab"), list("bdcaba")) == 4  # e.g. "bcba"
    assert lcs_length([], list("abc")) == 0


def test_rouge_empty_and_single_token():
    zero = {'rouge1': 0.0, 'rouge2': 0.0, 'rougeL': 0.0}
    assert rouge("", "the cat") == zero
    assert rouge("!!!", "the cat") == zero  # punctuation only -> no tokens
    assert rouge("the cat", "") == zero
    assert rouge("", "") == zero
    # one token each: identical unigram, but no bigrams on either side -> ROUGE-2 is 0
    assert rouge("Cat.", "cat") == approx({'rouge1': 1, 'rouge2': 0, 'rougeL': 1})


def test_rouge_multiple_references_takes_max_per_metric():
    # pred: the cat sat (3)
    # ref a "a dog ran": nothing shared -> 0, 0, 0
    # ref b "the cat sat down quickly today" (6): unigrams 3 -> P 1, R 1/2, F 2/3;
    #   bigrams the-cat, cat-sat of 5 -> P 1, R 2/5, F 4/7; LCS 3 -> 2/3
    # ref c "sat cat the": unigrams 3/3 -> 1; bigrams sat-cat, cat-the -> 0; LCS 1 -> 1/3
    # max per metric: rouge1 from c, rouge2 and rougeL from b
    refs = ["a dog ran", "the cat sat down quickly today", "sat cat the"]
    assert rouge("the cat sat", refs) == approx({'rouge1': 1, 'rouge2': 4 / 7, 'rougeL': 2 / 3})
    with pytest.raises(ValueError):
        rouge("the cat", [])


def test_corpus_rouge_is_mean_in_percent():
    # example 1 scores 1 everywhere (ROUGE-2 too: "the cat" is one shared bigram),
    # example 2 scores 0
    got = corpus_rouge(["The cat", "x"], [["the cat", "a dog"], "y"])
    assert got == approx({'rouge1': 50.0, 'rouge2': 50.0, 'rougeL': 50.0})
    with pytest.raises(ValueError):
        corpus_rouge(["a"], [])
