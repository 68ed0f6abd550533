"""
Pretrained GPT-2 weights without the `transformers` package.

What: a tiny safetensors reader/writer, a one-time download of OpenAI's GPT-2
checkpoints from the Hugging Face hub, and the key mapping from that layout to
ours (model.py keeps GPT-2's module names, so the mapping is almost one to one).

How:
    from model import GPT
    model = GPT.from_pretrained('gpt2')   # or a directory with config.json + model.safetensors
    cfg, sd = load_gpt2('gpt2')           # the same, without building the model

Downloads are cached in ~/.cache/nanobidir/NAME (or $NANOBIDIR_CACHE/NAME).

Why no `transformers`: safetensors is a simple format (8-byte header length, a
JSON header, raw little-endian bytes), so ~50 lines replace a large dependency
and every step from file to parameters stays readable.
"""
import json
import math
import os
import urllib.request

import torch

from adapters import is_adapter_param
from utils.runtime import disk_full

GPT2_NAMES = ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl')
HUB_URL = 'https://huggingface.co/openai-community/{name}/resolve/main/{file}'
FILES = ('config.json', 'model.safetensors')
DTYPES = {'F64': torch.float64, 'F32': torch.float32, 'F16': torch.float16, 'BF16': torch.bfloat16,
          'I64': torch.int64, 'I32': torch.int32, 'I16': torch.int16, 'I8': torch.int8,
          'U8': torch.uint8, 'BOOL': torch.bool}
# GPT-2's "Conv1D" module is a Linear with its weight stored as (in, out); nn.Linear wants (out, in)
CONV1D = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')

# -----------------------------------------------------------------------------
# safetensors

def read_safetensors(path):
    """Read a .safetensors file into {name: tensor}
    (each tensor owns its memory, dtype as stored)."""
    with open(path, 'rb') as f:
        size = os.fstat(f.fileno()).st_size
        bad = f"{path} is not a valid safetensors file"
        if size < 8:
            raise ValueError(f"{bad}: only {size} bytes")
        n = int.from_bytes(f.read(8), 'little')  # header length, u64 little-endian
        if 8 + n > size:
            raise ValueError(f"{bad}: header says {n} bytes but the file has {size} "
                             f"(truncated or another format)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{bad}: header is not JSON ({e})") from None
        if not isinstance(header, dict):
            raise ValueError(f"{bad}: its header is not a JSON object")
        header.pop('__metadata__', None)  # free-form strings, nothing we need
        out = {}
        for name, info in header.items():
            if not _is_entry(info):
                raise ValueError(f"{bad}: tensor {name!r} needs dtype, shape and data_offsets, "
                                 f"got {info!r:.200}")
            if info['dtype'] not in DTYPES:
                raise ValueError(f"{path}: tensor {name!r} has dtype {info['dtype']}, "
                                 f"supported: {sorted(DTYPES)}")
            dtype, shape = DTYPES[info['dtype']], info['shape']
            start, end = info['data_offsets']  # relative to the first byte after the header
            numel = math.prod(shape)
            if end - start != numel * dtype.itemsize or 8 + n + end > size:
                raise ValueError(f"{bad}: tensor {name!r} bytes [{start}, {end}) do not fit "
                                 f"shape {shape} {info['dtype']} in a {size}-byte file "
                                 f"(truncated?)")
            # one tensor at a time keeps peak memory near the model's size; bytearray is
            # writable, so torch is happy
            buf = bytearray(end - start)
            f.seek(8 + n + start)
            f.readinto(buf)
            out[name] = (torch.frombuffer(buf, dtype=dtype).reshape(shape) if numel
                         else torch.empty(shape, dtype=dtype))
    return out


def _is_entry(info):
    """A header entry as the format defines it:
    {'dtype': str, 'shape': [ints >= 0], 'data_offsets': [start, end]}."""
    if not isinstance(info, dict) or not {'dtype', 'shape', 'data_offsets'} <= set(info):
        return False
    shape, offsets = info['shape'], info['data_offsets']
    naturals = lambda xs: (isinstance(xs, list)  # noqa: E731
                           and all(type(x) is int and x >= 0 for x in xs))
    return (isinstance(info['dtype'], str) and naturals(shape) and naturals(offsets)
            and len(offsets) == 2)


# -----------------------------------------------------------------------------
# download

def _download(url, dest):
    """Fetch url into dest via a temp file: an interrupted download leaves nothing half-written."""
    from tqdm import tqdm
    tmp = dest + '.part'
    try:
        with urllib.request.urlopen(url, timeout=30) as r, open(tmp, 'wb') as f:
            total = int(r.headers.get('Content-Length') or 0) or None
            with tqdm(total=total, unit='B', unit_scale=True, desc=os.path.basename(dest)) as bar:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
        os.replace(tmp, dest)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        # Ctrl-C, or a full disk: not the network's fault
        if not isinstance(e, OSError) or disk_full(e):
            raise
        # URLError, HTTPError, timeouts and socket errors are all OSErrors
        raise ConnectionError(
            f"could not download {url} ({e}). If this machine is offline, download "
            f"{' and '.join(FILES)} by hand from {url.rsplit('/', 1)[0]}/ into a directory "
            f"and pass that directory path instead of the model name.") from e


def gpt2_dir(name, cache_dir=None):
    """Local directory holding config.json + model.safetensors for a GPT-2 name; downloads them
    the first time."""
    root = (cache_dir or os.environ.get('NANOBIDIR_CACHE')
            or os.path.expanduser('~/.cache/nanobidir'))
    d = os.path.join(root, name)
    os.makedirs(d, exist_ok=True)
    for file in FILES:
        if not os.path.exists(os.path.join(d, file)):
            _download(HUB_URL.format(name=name, file=file), os.path.join(d, file))
    return d

# -----------------------------------------------------------------------------
# GPT-2 checkpoint -> our layout

def load_gpt2(name_or_dir, cache_dir=None):
    """(GPTConfig kwargs, state_dict in model.py's layout) for a GPT-2 name or a local directory."""
    need = ' and '.join(FILES)
    if name_or_dir in GPT2_NAMES:
        d = gpt2_dir(name_or_dir, cache_dir)
    elif os.path.isdir(name_or_dir):
        d = name_or_dir
    elif os.sep in name_or_dir or '/' in name_or_dir or os.path.exists(name_or_dir):  # a path
        raise FileNotFoundError(f"{name_or_dir} is not a directory; "
                                f"pass a directory containing {need}")
    else:
        raise ValueError(f"unknown model {name_or_dir!r}: use one of {GPT2_NAMES} "
                         f"or a directory containing {need}")
    for file in FILES:
        if not os.path.isfile(os.path.join(d, file)):
            raise FileNotFoundError(f"{os.path.join(d, file)} not found; "
                                    f"a GPT-2 directory needs {need}")
    try:
        with open(os.path.join(d, 'config.json')) as f:
            hf = json.load(f)
        cfg = dict(n_layer=hf['n_layer'], n_head=hf['n_head'], n_embd=hf['n_embd'],
                   vocab_size=hf['vocab_size'], block_size=hf['n_positions'], bias=True,
                   dropout=0.0)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{d}/config.json is not valid JSON ({e}); download it again") from None
    except (KeyError, TypeError) as e:
        raise ValueError(f"{d}/config.json lacks {e}; is it a GPT-2 config?") from None
    sd = {}
    for k, v in read_safetensors(os.path.join(d, 'model.safetensors')).items():
        k = k.removeprefix('transformer.')  # hub files come with and without the prefix
        if k.endswith(('.attn.bias', '.attn.masked_bias')):  # note: '...c_attn.bias' does not match
            continue  # causal-mask buffers, not weights: our model builds its own masks
        if k.endswith(CONV1D):
            v = v.t().contiguous()  # (in, out) -> (out, in)
        sd[k if k == 'lm_head.weight' else 'transformer.' + k] = v
    # GPT-2 ties the output layer to the token embedding: files store only one of them (usually wte)
    for a, b in [('lm_head.weight', 'transformer.wte.weight'),
                 ('transformer.wte.weight', 'lm_head.weight')]:
        if a not in sd and b in sd:
            sd[a] = sd[b]
    return cfg, sd


def load_into(model, sd):
    """Copy sd into model after checking every key and shape; adapters
    (adapters.is_adapter_param) are left alone."""
    own = {k: v for k, v in model.state_dict().items() if not is_adapter_param(k)}
    missing = sorted(k for k in own if k not in sd)
    unexpected = sorted(k for k in sd if k not in own)
    shapes = [f"{k}: expected {tuple(own[k].shape)}, got {tuple(sd[k].shape)}"
              for k in sorted(own) if k in sd and own[k].shape != sd[k].shape]
    if missing or unexpected or shapes:
        few = lambda items: (f"{items[:5]}"  # noqa: E731
                             + (f" and {len(items) - 5} more" if len(items) > 5 else ""))
        msg = [f"missing keys: {few(missing)}"] if missing else []
        msg += [f"unexpected keys: {few(unexpected)}"] if unexpected else []
        msg += [f"shape mismatches: {', '.join(shapes[:5])}"] if shapes else []
        raise ValueError(f"checkpoint does not match the model: {'; '.join(msg)}")
    with torch.no_grad():
        for k, v in own.items():
            # state_dict() tensors share storage with the parameters; copy_ also casts
            # f16/bf16 -> f32
            v.copy_(sd[k])
    return model
