"""Small functions several test files share (pytest puts tests/ on sys.path, so
`from helpers import ...` works)."""
import importlib.util
import json
import os

import pytest
import torch

from utils import checkpoint, weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def randomize_adapters(model, seed=1):
    """Fresh adapters change nothing by design; move them away from their start so they do
    something: LoRA's and DoRA's B away from 0, DoRA's m and IA3's l away from where they start
    (by up to 50%)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if 'lora_B' in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif 'dora_m' in n or 'ia3_l' in n:
                p.mul_(1 + (torch.rand(p.shape, generator=g) - 0.5))


def load_script(name):
    """data/ is not a package: load data/<name>/prepare.py from its path."""
    spec = importlib.util.spec_from_file_location(f'prepare_{name}',
                                                  os.path.join(ROOT, 'data', name, 'prepare.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(''.join(json.dumps(r) + '\n' for r in records))


def write_safetensors(path, tensors, metadata=None):
    """Write {name: tensor} as .safetensors (readable by the official library too)."""
    names = {v: k for k, v in weights.DTYPES.items()}
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        # via uint8 because numpy has no bfloat16
        b = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {'dtype': names[t.dtype], 'shape': list(t.shape),
                        'data_offsets': [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    if metadata:
        header['__metadata__'] = {str(k): str(v) for k, v in metadata.items()}
    h = json.dumps(header).encode()
    h += b' ' * (-len(h) % 8)  # pad so tensor data starts 8-byte aligned, as the format recommends
    with open(path + '.tmp', 'wb') as f:
        f.writelines([len(h).to_bytes(8, 'little'), h, *blobs])
    os.replace(path + '.tmp', path)  # atomic: never leave a half-written file under the real name


def kill_after_first_checkpoint(monkeypatch, run):
    """Call run() as if its process were killed right after writing its first checkpoint."""
    real_save = checkpoint.save_checkpoint

    def save_then_die(path, ckpt):
        real_save(path, ckpt)
        raise KeyboardInterrupt
    monkeypatch.setattr(checkpoint, 'save_checkpoint', save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(checkpoint, 'save_checkpoint', real_save)
