"""Shared test setup: the repo root on sys.path, few threads, and tiny-model helpers."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import pytest  # noqa: E402
import torch  # noqa: E402

# tiny models run fastest on one thread, and CI has only two cores
torch.set_num_threads(int(os.environ.get('NANOBIDIR_TEST_THREADS', '1')))

# the GPT-2 tokenizer files, offline (see ../shared/data/README.md)
os.environ.setdefault('TIKTOKEN_CACHE_DIR',
                      os.path.join(ROOT, '..', 'shared', 'data', 'tiktoken_cache'))


@pytest.fixture
def tiny_gpt():
    """A factory for a small random GPT; every call with the same seed gives the same weights."""
    from model import GPT, GPTConfig

    def make(seed=0, **kw):
        torch.manual_seed(seed)
        cfg = dict(block_size=64, vocab_size=23, n_layer=2, n_head=2, n_embd=32, dropout=0.0,
                   bias=True)
        cfg.update(kw)
        return GPT(GPTConfig(**cfg)).eval()
    return make
