"""Tests for data/toy/toy.py: the seeded toy instruction tasks and their exact-match scoring."""
import pytest

from data.toy import toy

def small(**kw):
    return toy.make_toy_task(**{'seed': 0, 'n_train': 200, 'n_val': 40, **kw})

def ids(text, meta):
    return [meta['itos'].index(c) for c in text]

def test_vocabulary_and_specials():
    meta = toy.toy_meta()
    assert ''.join(meta['itos']) == '.^=$CRSD0123456789'
    assert (meta['pad'], meta['bos'], meta['sep'], meta['eos']) == (0, 1, 2, 3)
    assert meta['vocab_size'] == len(meta['itos']) == len(set(meta['itos']))
    assert toy.toy_meta(n_symbols=12)['itos'][-2:] == ['a', 'b']

@pytest.mark.parametrize('op,data,want', [
    ('C', '31415', '31415'),
    ('R', '31415', '51413'),
    ('S', '31415', '11345'),
    ('S', 'b9a0', '09ab'),       # digits sort before letters
    ('D', '31415', '3145'),
    ('D', '5511225', '512'),     # first occurrences, in order (not sorted)
    ('D', '7', '7'),
])
def test_ops_hand_checked(op, data, want):
    assert toy.apply_op(op, data) == want

def test_example_layout_after_and_before():
    after, before = toy.toy_meta(op_position='after'), toy.toy_meta(op_position='before')
    ex = toy.make_example('R', '3141', after)
    assert ex['prompt'] == ids('^3141R=', after) and ex['answer'] == ids('1413$', after)
    ex = toy.make_example('R', '3141', before)
    assert ex['prompt'] == ids('^R3141=', before) and ex['answer'] == ids('1413$', before)

def test_task_answers_are_right():
    for pos in ('after', 'before'):
        task = small(op_position=pos)
        meta = task['meta']
        assert meta['op_position'] == pos and meta['metric'] == 'exact_match'
        for ex in task['train'] + task['val']:
            data = toy.format_prompt(ex['prompt'], meta).split()[0]
            assert ex['prompt'][0] == meta['bos'] and ex['prompt'][-1] == meta['sep']
            op_at = -2 if pos == 'after' else 1
            assert meta['itos'][ex['prompt'][op_at]] == ex['op']
            assert ex['answer'] == ids(toy.apply_op(ex['op'], data), meta) + [meta['eos']]
            assert 4 <= len(data) <= 12

def test_deterministic_for_a_seed():
    assert small() == small()
    assert small()['train'] != small(seed=1)['train']
    # val depends only on the seed and n_val, not on how much training data is asked for
    assert small()['val'] == small(n_train=50)['val']

def test_splits_do_not_overlap_and_ops_balanced():
    # 24 of the 24 possible prompts
    task = small(min_len=1, max_len=2, n_symbols=3, ops='CR', n_train=20, n_val=4)
    prompts = [tuple(ex['prompt']) for ex in task['train'] + task['val']]
    assert len(prompts) == len(set(prompts)) == 24
    assert sorted(ex['op'] for ex in task['train']).count('C') == 10
    with pytest.raises(ValueError, match='distinct'):
        small(min_len=1, max_len=2, n_symbols=3, ops='CR', n_train=21, n_val=4)

def test_bad_options_raise():
    for kw in ({'ops': 'CX'}, {'ops': ''}, {'op_position': 'middle'},
               {'min_len': 5, 'max_len': 4}, {'n_symbols': 0}):
        with pytest.raises(ValueError):
            small(**kw)

def test_text_round_trip():
    for pos in ('after', 'before'):
        meta = toy.toy_meta(op_position=pos)
        prompt = toy.parse_prompt('31415 R', meta)
        assert prompt == toy.make_example('R', '31415', meta)['prompt']
        assert toy.parse_prompt(' R 31415 ', meta) == prompt
        assert toy.format_prompt(prompt, meta) == '31415 R'
    meta = toy.toy_meta()
    for bad in ('31415', 'R', '3R1', '31415 RS', '31x15 R', ''):
        with pytest.raises(ValueError):
            toy.parse_prompt(bad, meta)
    assert toy.format_answer(ids('51413$77', meta), meta) == '51413'

def test_exact_match_by_op():
    meta = toy.toy_meta()
    exs = [toy.make_example(op, d, meta)
           for op, d in [('R', '31415'), ('R', '12'), ('S', '31'), ('C', '5')]]
    preds = [ids('51431$', meta),   # wrong
             ids('21$..', meta),    # right, junk after EOS ignored
             ids('13', meta),       # right, ran out of tokens before EOS
             ids('55$', meta)]      # wrong: too long
    r = toy.exact_match_by_op(exs, preds, meta, n_show=1)
    assert r['acc'] == 0.5 and r['n'] == 4
    assert r['per_op'] == {'C': 0.0, 'R': 0.5, 'S': 1.0}
    assert r['mistakes'] == ['31415 R -> model 51431, truth 51413']
    with pytest.raises(ValueError):
        toy.exact_match_by_op(exs, preds[:3], meta)
