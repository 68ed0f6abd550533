"""data/tasks.py: loading tasks, tokenizers, right/left-padded batches, the block-size check."""
import json
import os

import pytest
import torch

from data import tasks

EXAMPLES = [{'prompt': [1, 5, 6], 'answer': [7, 3]},
            {'prompt': [1, 5], 'answer': [8, 9, 7, 3]},
            {'prompt': [1, 4, 4, 4, 4], 'answer': [3]}]

def test_collate_targets():
    b = tasks.collate(EXAMPLES, pad_id=0)
    idx, tgt, valid = b['idx'], b['targets'], b['valid']
    assert idx.shape == tgt.shape == valid.shape == b['pos'].shape == (3, 6)
    assert idx.tolist() == [[1, 5, 6, 7, 3, 0], [1, 5, 8, 9, 7, 3], [1, 4, 4, 4, 4, 3]]
    assert tgt.tolist() == [[-1, -1, 7, 3, -1, -1], [-1, 8, 9, 7, 3, -1], [-1, -1, -1, -1, 3, -1]]
    assert valid.sum(1).tolist() == [5, 6, 6]
    assert b['prompt_len'].tolist() == [3, 2, 5] and b['answer_len'].tolist() == [2, 4, 1]
    assert b['pos'].tolist() == [list(range(6))] * 3
    assert idx.dtype == tgt.dtype == b['pos'].dtype == torch.long and valid.dtype == torch.bool
    # general rule: a target is either -1 or the next input token, and there are answer_len of them
    keep = tgt[:, :-1] != -1
    assert torch.equal(tgt[:, :-1][keep], idx[:, 1:][keep])
    assert keep.sum(1).tolist() == b['answer_len'].tolist()

def test_collate_on_toy_batch():
    task = tasks.load_task('toy', seed=0, n_train=16, n_val=0)
    b = tasks.collate(task['train'], pad_id=task['meta']['pad'])
    for row, ex in enumerate(task['train']):
        P, A = len(ex['prompt']), len(ex['answer'])
        assert b['targets'][row, P - 1:P + A - 1].tolist() == ex['answer']
        assert ((b['targets'][row, :P - 1] == -1).all()
                and (b['targets'][row, P + A - 1:] == -1).all())
        assert (b['idx'][row, P + A:] == task['meta']['pad']).all()
        assert not b['valid'][row, P + A:].any()

def test_collate_prompts_left_padded():
    idx, valid = tasks.collate_prompts(EXAMPLES, pad_id=0)
    assert idx.tolist() == [[0, 0, 1, 5, 6], [0, 0, 0, 1, 5], [1, 4, 4, 4, 4]]
    assert valid.tolist() == [[False, False, True, True, True],
                              [False, False, False, True, True],
                              [True] * 5]
    assert (idx[:, -1] != 0).all()  # every prompt ends in the last column

def test_check_fits():
    task = {'meta': {'name': 'tiny'}, 'train': EXAMPLES, 'val': EXAMPLES[:1]}
    assert tasks.check_fits(task, 6) == 6
    with pytest.raises(ValueError, match=r"'tiny'.*6 tokens.*block_size is 5"):
        tasks.check_fits(task, 5)

def test_char_tokenizer():
    meta = tasks.load_task('toy', n_train=1, n_val=0)['meta']
    tok = tasks.get_tokenizer(meta)
    assert tok.decode(tok.encode('^31R=')) == '^31R='
    assert tok.encode('^0') == [1, meta['itos'].index('0')]
    with pytest.raises(ValueError, match='not in the vocabulary'):
        tok.encode('3 1')

def test_gpt2_tokenizer(monkeypatch):
    cache = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data', 'tiktoken_cache')
    if not os.path.isdir(cache) and 'TIKTOKEN_CACHE_DIR' not in os.environ:
        pytest.skip('no offline GPT-2 BPE files')
    if os.path.isdir(cache):
        monkeypatch.setenv('TIKTOKEN_CACHE_DIR', os.path.abspath(cache))
    tok = tasks.get_tokenizer({'tokenizer': 'gpt2'})
    assert tok.decode(tok.encode('Hello world')) == 'Hello world'

def write_dataset(root, name, splits=('train', 'val', 'test')):
    folder = root / name
    folder.mkdir()
    meta = {'name': name, 'tokenizer': 'char', 'vocab_size': 4, 'itos': ['.', 'a', 'b', '$'],
            'eos': 3, 'pad': 0, 'bos': None, 'metric': 'rouge'}
    (folder / 'meta.json').write_text(json.dumps(meta))
    for split in splits:
        rows = [{'prompt': [1, 2], 'answer': [2, 3], 'refs': ['b']},
                {'prompt': [2], 'answer': [1, 3]}]
        (folder / f'{split}.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    return meta

def test_load_task_from_files(tmp_path):
    meta = write_dataset(tmp_path, 'tiny')
    task = tasks.load_task('tiny', data_dir=str(tmp_path))
    assert task['meta'] == meta and set(task) == {'meta', 'train', 'val', 'test'}
    assert task['val'][0] == {'prompt': [1, 2], 'answer': [2, 3], 'refs': ['b']}
    write_dataset(tmp_path, 'notest', splits=('train', 'val'))
    assert 'test' not in tasks.load_task('notest', data_dir=str(tmp_path))

def test_load_task_missing_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"python .*nothere.prepare\.py"):
        tasks.load_task('nothere', data_dir=str(tmp_path))
    write_dataset(tmp_path, 'half', splits=('train',))
    with pytest.raises(FileNotFoundError, match=r"val\.jsonl"):
        tasks.load_task('half', data_dir=str(tmp_path))
    with pytest.raises(ValueError, match='toy'):
        tasks.load_task('half', data_dir=str(tmp_path), n_train=3)

def test_load_toy_passes_options():
    task = tasks.load_task('toy', seed=3, n_train=10, n_val=5, ops='RS', op_position='before')
    assert len(task['train']) == 10 and len(task['val']) == 5
    assert ({ex['op'] for ex in task['train']} == {'R', 'S'}
            and task['meta']['op_position'] == 'before')


def test_gpt2_tokenizer_without_its_files_says_where_to_point(monkeypatch, tmp_path):
    import tiktoken
    from data import tasks

    def offline(name):
        raise ConnectionError("no network")
    monkeypatch.setattr(tiktoken, 'get_encoding', offline)
    with pytest.raises(FileNotFoundError, match='TIKTOKEN_CACHE_DIR'):
        tasks.get_tokenizer({'tokenizer': 'gpt2'})
