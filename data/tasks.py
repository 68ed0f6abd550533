"""
Datasets as prompt/answer pairs, their tokenizers, and batching. Used by
train.py, sample.py, bitune.py and bai.py for every dataset.

An example is {'prompt': [ids], 'answer': [ids ending in meta['eos']]} plus an
optional 'refs' (reference texts, for ROUGE) and 'op' (toy operation).
A task is {'meta': {...}, 'train': [...], 'val': [...]} (+ 'test' when present).

    task = load_task('toy', n_train=2000)   # generated in memory, see data/toy/toy.py
    task = load_task('dialogsum')           # read from data/dialogsum/, written by its prepare.py
    batch = collate(task['train'][:8])      # right-padded, for the loss
    idx, valid = collate_prompts(task['val'][:8])  # left-padded, for generation
"""
import hashlib
import json
import os

import torch

from data.toy import toy

META_KEYS = ('name', 'tokenizer', 'vocab_size', 'eos', 'pad', 'bos', 'metric')

def task_from_config(cfg):
    """The task a run's settings (train.py's globals, as a dict) describe."""
    if cfg['dataset'] == 'toy':
        return load_task('toy', seed=cfg['toy_seed'], n_train=cfg['toy_n_train'],
                         n_val=cfg['toy_n_val'], ops=cfg['toy_ops'], min_len=cfg['toy_min_len'],
                         max_len=cfg['toy_max_len'], n_symbols=cfg['toy_n_symbols'],
                         op_position=cfg['toy_op_position'])
    return load_task(cfg['dataset'], data_dir=cfg['data_dir'])


def load_task(name, data_dir='data', **toy_options):
    """'toy' is generated from toy_options; any other name is read from data_dir/<name>/."""
    if name == 'toy':
        return toy.make_toy_task(**toy_options)
    if toy_options:
        raise ValueError(f"options {sorted(toy_options)} only apply to the 'toy' task, "
                         f"not '{name}'")
    folder = os.path.join(data_dir, name)
    files = {split: os.path.join(folder, f'{split}.jsonl') for split in ('train', 'val', 'test')}
    needed = [os.path.join(folder, 'meta.json'), files['train'], files['val']]
    missing = [f for f in needed if not os.path.exists(f)]
    odd = [f for f in files.values() if os.path.exists(f) and not os.path.isfile(f)]
    if odd or not (missing or os.path.isfile(needed[0])):  # a folder or a pipe: never opened
        raise ValueError(f"{(odd or needed)[0]} is not a regular file; re-run "
                         f"data/{name}/prepare.py")
    if missing:
        raise FileNotFoundError(f"dataset '{name}' is not prepared: missing {', '.join(missing)}. "
                                f"Run `python data/{name}/prepare.py --out_dir {folder}` first "
                                f"(or pass the right data_dir).")
    redo = f"re-run data/{name}/prepare.py"
    meta = read_json(needed[0], redo)
    lost = [k for k in META_KEYS if k not in meta] if isinstance(meta, dict) else list(META_KEYS)
    if lost:
        raise ValueError(f"{needed[0]} lacks {lost}: {redo}")
    check_files_match(meta, files, needed[0], redo)
    task = {'meta': meta}
    for split, path in files.items():
        if os.path.exists(path):  # 'test' is optional
            task[split] = read_json(path, redo, lines=True)
            check_examples(task[split], meta, path, redo)
    return task

def check_files_match(meta, files, meta_path, redo):
    """prepare.py writes into meta.json a hash of each split it wrote (data/prepare_common.py says
    why): a split that does not match comes from another preparation, or from one stopped midway."""
    if 'files' not in meta:  # written by hand, not by a prepare.py
        return
    for path in files.values():
        if os.path.exists(path):
            with open(path, 'rb') as f:
                if file_hash(f.read()) != meta['files'].get(os.path.basename(path)):
                    raise ValueError(f"{path} is not the file {meta_path} describes "
                                     f"(it is from another preparation, or one that was stopped "
                                     f"midway); {redo}")


def file_hash(data):
    """The hash meta.json keeps of a split file's bytes (prepare_common.py writes it)."""
    return hashlib.sha256(data).hexdigest()[:16]


def read_json(path, redo, lines=False):
    """The JSON value in a file, or (lines=True) the list of values of a .jsonl file, one per line.
    A file that is damaged (cut short by a full disk or a killed prepare.py) fails with its name
    and line."""
    out = []
    try:
        with open(path, encoding='utf-8') as f:
            for i, text in enumerate(f if lines else [f.read()], 1):
                if text.strip():
                    out.append(json.loads(text))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" line {i}" if lines and isinstance(e, json.JSONDecodeError) else ""
        raise ValueError(f"{path}{where} is damaged ({type(e).__name__}: {e}); {redo}") from None
    return out if lines else (out[0] if out else None)

def check_examples(examples, meta, path, redo):
    """Every example has a non-empty prompt and an answer ending in EOS, all ids in the vocabulary:
    an id past it would fail deep inside the model (or, on a GPU, as an unreadable device error)."""
    if not examples and not path.endswith('test.jsonl'):
        raise ValueError(f"{path} holds no examples: {redo}")
    V = meta['vocab_size']
    for i, ex in enumerate(examples, 1):
        try:
            ok = all(isinstance(ex[k], list) and ex[k]
                     and all(type(t) is int and 0 <= t < V for t in ex[k])
                     for k in ('prompt', 'answer')) and ex['answer'][-1] == meta['eos']
        except (KeyError, TypeError):
            ok = False
        if not ok:
            raise ValueError(f"{path}, example {i}: an example is "
                             f"{{'prompt': [ids], 'answer': [ids ending in {meta['eos']} (EOS)]}} "
                             f"with ids in 0..{V - 1}; {redo}")

class CharTokenizer:
    """One token per character, the table taken from meta['itos']."""
    def __init__(self, itos):
        self.itos, self.stoi = list(itos), {s: i for i, s in enumerate(itos)}

    def encode(self, text):
        bad = sorted(set(c for c in text if c not in self.stoi))
        if bad:
            raise ValueError(f"characters {bad} are not in the vocabulary {''.join(self.itos)!r}")
        return [self.stoi[c] for c in text]

    def decode(self, ids):
        return ''.join(self.itos[i] for i in ids)

def gpt2_encoding():
    """tiktoken's GPT-2 BPE. Offline, tiktoken reads its files from TIKTOKEN_CACHE_DIR; when neither
    that nor tiktoken's other cache setting is given and ../shared/data/tiktoken_cache sits beside
    this repository (the offline copies the tests use), that folder is used."""
    import tiktoken  # imported here so char-level tasks never need it
    beside = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          '..', 'shared', 'data', 'tiktoken_cache')
    if (not (os.environ.get('TIKTOKEN_CACHE_DIR') or os.environ.get('DATA_GYM_CACHE_DIR'))
            and os.path.isdir(beside)):
        os.environ['TIKTOKEN_CACHE_DIR'] = os.path.normpath(beside)
    try:
        return tiktoken.get_encoding('gpt2')
    except Exception as e:  # usually: no internet and nothing in tiktoken's cache
        raise FileNotFoundError("could not load tiktoken's 'gpt2' encoding (GPT-2's BPE files): "
                                "connect once to download them, "
                                "or set TIKTOKEN_CACHE_DIR to a folder that holds them") from e


def get_tokenizer(meta):
    """An object with encode(str) -> [ids] and decode([ids]) -> str, for this task."""
    if meta['tokenizer'] == 'char':
        return CharTokenizer(meta['itos'])
    if meta['tokenizer'] == 'gpt2':
        return gpt2_encoding()
    raise ValueError(f"unknown tokenizer {meta['tokenizer']!r} in meta: expected 'char' or 'gpt2'")

def collate(examples, device='cpu', pad_id=0):
    """Right-pad prompt+answer sequences into one batch for the loss.

    Row b of idx holds prompt + answer (EOS included), then pad_id. targets[b, t]
    is the token the model should predict after reading idx[b, :t+1]: idx[b, t+1]
    where that is an answer token, -1 (ignored) on the prompt, on the last real
    position and on padding. So each row has exactly answer_len targets.
    The padding value never matters (valid masks those keys and their targets
    are -1); pass meta['pad'] if you want printed batches to look tidy.

    Loss weighting: GPT.forward averages over all target tokens of the batch,
    so long answers weigh more than short ones (token-weighted, not the
    per-example mean of the Bitune authors). To keep that same mean across
    gradient accumulation, scale micro-batch i's loss by
    answer_len.sum() of micro-batch i / answer tokens in the whole step
    (not 1 / number of micro-batches), as train.py does.
    """
    if any(not ex['prompt'] or not ex['answer'] for ex in examples):
        raise ValueError("every example needs a non-empty prompt and answer "
                         "(the answer ends in EOS)")
    lengths = [len(ex['prompt']) + len(ex['answer']) for ex in examples]
    B, T = len(examples), max(lengths)
    idx = torch.full((B, T), pad_id, dtype=torch.long)
    targets = torch.full((B, T), -1, dtype=torch.long)
    valid = torch.zeros((B, T), dtype=torch.bool)
    for b, ex in enumerate(examples):
        P, A = len(ex['prompt']), len(ex['answer'])
        idx[b, :P + A] = torch.tensor(ex['prompt'] + ex['answer'])
        # from the last prompt token on, predict the answer
        targets[b, P - 1:P + A - 1] = idx[b, P:P + A]
        valid[b, :P + A] = True
    return {'idx': idx.to(device), 'targets': targets.to(device), 'valid': valid.to(device),
            # (B, T): right padding keeps 0..T-1 in every row
            'pos': torch.arange(T, device=device).repeat(B, 1),
            'prompt_len': torch.tensor([len(ex['prompt']) for ex in examples], device=device),
            'answer_len': torch.tensor([len(ex['answer']) for ex in examples], device=device)}

def collate_prompts(examples, device='cpu', pad_id=0):
    """Left-pad the prompts, so every row's last prompt token sits in the last column
    and generation appends new tokens to all rows at once. Returns idx (B, P) and valid (B, P)."""
    P = max(len(ex['prompt']) for ex in examples)
    idx = torch.full((len(examples), P), pad_id, dtype=torch.long)
    valid = torch.zeros((len(examples), P), dtype=torch.bool)
    for b, ex in enumerate(examples):
        n = len(ex['prompt'])
        idx[b, P - n:] = torch.tensor(ex['prompt'])
        valid[b, P - n:] = True
    return idx.to(device), valid.to(device)

def check_fits(task, block_size):
    """Raise a ValueError if some example (prompt + answer) is longer than block_size; else return
    the longest length."""
    longest, where = 0, None
    for split in ('train', 'val', 'test'):
        for ex in task.get(split, []):
            n = len(ex['prompt']) + len(ex['answer'])
            if n > longest:
                longest, where = n, (split, len(ex['prompt']), len(ex['answer']))
    if longest > block_size:
        name = task['meta']['name']
        hint = ("lower max_len" if name == 'toy'
                else f"shorten the examples in data/{name}/prepare.py")
        raise ValueError(f"dataset '{name}': the longest example has {longest} tokens "
                         f"({where[0]} split, prompt {where[1]} + answer {where[2]}) "
                         f"but block_size is {block_size}. "
                         f"Set block_size >= {longest}, or {hint}.")
    return longest
