"""Small functions several test files share (pytest puts tests/ on sys.path, so `from helpers import ...` works)."""
import importlib.util
import json
import os

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def randomize_lora(model, seed=1):
    """Fresh adapters are zero by design; give B random values so they do something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if 'lora_B' in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def load_script(name):
    """data/ is not a package: load data/<name>/prepare.py from its path."""
    spec = importlib.util.spec_from_file_location(f'prepare_{name}', os.path.join(ROOT, 'data', name, 'prepare.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(''.join(json.dumps(r) + '\n' for r in records))
