"""
Tests for data/dialogsum/prepare.py, data/scitldr/prepare.py and data/prepare_common.py,
on a few records written here (no network). A tiny --block_size makes the dropping and
cutting of long examples easy to trigger.
Run: python -m pytest -q tests/test_summarization_data.py
"""
import json
import os

import pytest

from helpers import load_script, write_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EOS = 50256
BLOCK, MAX_ANSWER = 96, 16  # so eval prompts are cut to 80 tokens
LONG = ' '.join(f'word{i}' for i in range(200))  # far more than 96 tokens


@pytest.fixture(scope='module')
def enc():
    # tiktoken reads the GPT-2 BPE files from this cache instead of downloading them
    cache = os.environ.setdefault('TIKTOKEN_CACHE_DIR',
                                  os.path.join(ROOT, '..', 'shared', 'data', 'tiktoken_cache'))
    if not os.path.isdir(cache):
        pytest.skip(f"no GPT-2 tokenizer files at TIKTOKEN_CACHE_DIR={cache}, "
                    f"and tests must not download them")
    import tiktoken
    return tiktoken.get_encoding('gpt2')




def read_out(out):
    meta = json.loads((out / 'meta.json').read_text())
    splits = {s: [json.loads(line) for line in (out / f'{s}.jsonl').read_text().splitlines()]
              for s in ('train', 'val', 'test')}
    return meta, splits


def run(module, src, out, *extra):
    return module.main(['--src', str(src), '--out_dir', str(out),
                        '--block_size', str(BLOCK), '--max_answer', str(MAX_ANSWER), *extra])


def test_dialogsum(enc, tmp_path):
    dialogue = "#Person1#: Hi, how are you?\n#Person2#: Fine, thanks."
    short = {'fname': 'x', 'dialogue': dialogue + "\n", 'summary': "#Person2# is fine.",
             'topic': 't'}
    long_ = {**short, 'dialogue': dialogue + "\n#Person1#: " + LONG}
    src = tmp_path / 'src'
    write_jsonl(src / 'dialogsum.train.jsonl', [short, long_, short])
    write_jsonl(src / 'dialogsum.dev.jsonl', [long_, {**short, 'summary': LONG}])
    write_jsonl(src / 'dialogsum.test.jsonl',
                [{'fname': 'y', 'dialogue': long_['dialogue'],
                  'summary1': 'a.', 'summary2': 'b.', 'summary3': 'c.'}])
    mod = load_script('dialogsum')
    stats = run(mod, src, tmp_path / 'dialogsum')
    assert (stats['train']['examples'], stats['train']['dropped']) == (2, 1)
    assert (stats['val']['truncated'], stats['val']['answers_cut']) == (1, 1)
    assert (stats['test']['truncated'], stats['test']['answers_cut']) == (1, 0)

    meta, splits = read_out(tmp_path / 'dialogsum')
    # their hashes (test_robust_data.py)
    assert set(meta.pop('files')) == {'train.jsonl', 'val.jsonl', 'test.jsonl'}
    assert meta == {'name': 'dialogsum', 'tokenizer': 'gpt2', 'vocab_size': 50257, 'eos': EOS,
                    'pad': EOS, 'bos': None, 'metric': 'rouge', 'block_size': BLOCK,
                    'max_answer': MAX_ANSWER,
                    'template': mod.TEMPLATE}  # sample.py wraps a raw text with it
    train = splits['train'][0]
    # an untruncated prompt is exactly the tokenized template, the dialogue's final newline stripped
    assert train['prompt'] == enc.encode_ordinary(mod.TEMPLATE.format(text=dialogue))
    assert train['answer'] == enc.encode_ordinary(" #Person2# is fine.") + [EOS]
    assert 'refs' not in train

    cut = splits['val'][0]['prompt']
    assert len(cut) == BLOCK - MAX_ANSWER
    text = enc.decode(cut)
    assert (text.startswith("Summarize the dialogue.\n\n#Person1#: Hi")
            and text.endswith("word199\n\nSummary:"))
    long_answer = splits['val'][1]['answer']
    assert len(long_answer) == MAX_ANSWER and long_answer[-1] == EOS
    assert splits['val'][1]['refs'] == [LONG]
    assert splits['test'][0]['refs'] == ['a.', 'b.', 'c.']
    assert all(ex['answer'][-1] == EOS for split in splits.values() for ex in split)

    # the files are what tasks.load_task expects
    from data import tasks
    task = tasks.load_task('dialogsum', data_dir=str(tmp_path))
    assert len(task['train']) == 2 and task['test'][0]['refs'] == ['a.', 'b.', 'c.']

    # --limit keeps the first N records of each split
    stats = run(mod, src, tmp_path / 'small', '--limit', '1')
    assert [stats[s]['records'] for s in ('train', 'val', 'test')] == [1, 1, 1]


def test_scitldr(enc, tmp_path):
    rec = {'source': ["We study cats. ", "Cats sleep a lot."],
           'target': ["Cats sleep.", "A cat study."],
           'paper_id': 'p', 'title': 't'}
    long_ = {**rec, 'source': rec['source'] + [LONG]}
    src = tmp_path / 'src'
    write_jsonl(src / 'train.jsonl', [{**rec, 'target': rec['target'][:1]}, long_])
    write_jsonl(src / 'dev.jsonl', [rec])
    write_jsonl(src / 'test.jsonl', [long_])
    mod = load_script('scitldr')
    stats = run(mod, src, tmp_path / 'out')
    assert (stats['train']['examples'], stats['train']['dropped']) == (1, 1)
    assert (stats['val']['truncated'], stats['test']['truncated']) == (0, 1)

    meta, splits = read_out(tmp_path / 'out')
    assert meta['name'] == 'scitldr' and meta['metric'] == 'rouge' and meta['eos'] == EOS
    # sentences stripped and joined by single spaces; the first TLDR is the answer, all are refs
    assert splits['train'][0]['prompt'] == enc.encode_ordinary(
        mod.TEMPLATE.format(text="We study cats. Cats sleep a lot."))
    assert splits['val'][0]['answer'] == enc.encode_ordinary(" Cats sleep.") + [EOS]
    assert splits['val'][0]['refs'] == ["Cats sleep.", "A cat study."]
    cut = splits['test'][0]['prompt']
    assert len(cut) == BLOCK - MAX_ANSWER and enc.decode(cut).endswith("word199\n\nTL;DR:")


def test_missing_or_unreachable_files(enc, tmp_path):
    mod = load_script('dialogsum')
    with pytest.raises(FileNotFoundError, match='dialogsum.train.jsonl'):
        mod.main(['--src', str(tmp_path), '--out_dir', str(tmp_path / 'out')])
    # a failed download says what to do; a file:// URL to nowhere fails without any network
    import prepare_common  # importable now: the prepare script put data/ on sys.path
    with pytest.raises(ConnectionError, match='--src'):
        prepare_common.download((tmp_path / 'nowhere.jsonl').as_uri(), str(tmp_path / 'got.jsonl'))
    assert not (tmp_path / 'got.jsonl').exists()
