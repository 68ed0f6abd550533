"""
Settings, nanoGPT style: a script's settings are plain globals, and `--key=value` or a config file
overrides them (configure). Every key must exist in the script's defaults and keep its type (an int
may stand for a float), so a typo fails at start-up, not an hour into a run. Then the values are
checked (check_ranges, check_train_config) and device='auto', dtype='auto' resolved (pick_device,
pick_dtype). A config file is Python, run with exec(): only pass files you trust.

    python train.py config/lab_toy.py --max_iters=500 --method=causal
"""
import ast
import difflib
import math
import os
import string
import sys
import types

import torch

from adapters import KINDS
from bitune import VARIANTS
from model import has_hidden_layer


def configure(defaults, argv):
    """Return a copy of `defaults` with the overrides in argv applied, in order.
    --help (or -h) prints every setting with its default instead, and exits."""
    if '--help' in argv or '-h' in argv:
        print("settings (override with --key=value, or a config file of assignments, see config/):")
        for key, value in defaults.items():
            print(f"  --{key}={value!r}")
        sys.exit(0)
    config = dict(defaults)
    for arg in argv:
        if arg.startswith('--'):
            key, eq, text = arg[2:].partition('=')
            if not eq:
                raise ValueError(f"{arg!r}: write overrides as --key=value")
            try:
                value = ast.literal_eval(text)  # numbers, True/False, None, quoted strings
            except (ValueError, SyntaxError):
                value = text                    # anything else is a plain string: --dataset=toy
            if isinstance(config.get(key), str) and not isinstance(value, str):
                value = text                    # a text setting keeps what was written: --seeds=1,2
            _set(config, key, value, where=arg)
            continue
        if not os.path.isfile(arg):
            what = ('not found; expected' if not os.path.exists(arg) else 'is a directory, not'
                    if os.path.isdir(arg) else 'is not a regular file; expected')
            raise ValueError(f"config file {arg!r} {what} a Python file of settings "
                             f"(overrides are written --key=value)")
        namespace = {}
        try:
            with open(arg, encoding='utf-8') as f:
                exec(compile(f.read(), arg, 'exec'), namespace)
        except (Exception, SystemExit) as e:  # the file is Python: what goes wrong is its mistake
            raise ValueError(f"config file {arg!r} failed to run: "
                             f"{type(e).__name__}: {e}") from None
        for key, value in namespace.items():
            if not (key.startswith('_') or callable(value) or isinstance(value, types.ModuleType)):
                _set(config, key, value, where=arg)
    return config


def _set(config, key, value, where):
    if key not in config:
        close = difflib.get_close_matches(key, config, n=3)
        raise ValueError(f"unknown config key {key!r} (from {where})"
                         + (f"; did you mean {' or '.join(close)}?" if close else ""))
    old = config[key]
    if old is not None:
        if isinstance(old, float) and type(value) is int:
            value = float(value)  # --learning_rate=1 means 1.0
        elif type(value) is not type(old):  # None included: a setting with a value needs one
            raise ValueError(f"config key {key!r} (from {where}) must be {type(old).__name__}, "
                             f"got {value!r} ({type(value).__name__})")
        if isinstance(value, float) and not math.isfinite(value):  # 1e999 parses as inf
            raise ValueError(f"config key {key!r} (from {where}) must be a finite number, "
                             f"got {value}")
    config[key] = value


RULES = {'>= 1': lambda v: v >= 1, '>= 2': lambda v: v >= 2, '>= 0': lambda v: v >= 0,
         '> 0': lambda v: v > 0, 'in 1..1000': lambda v: 1 <= v <= 1000,
         'in [0, 1)': lambda v: 0 <= v < 1}
SEED, CORES = 'in 0..2**63-1 (a seed)', f'in 0..{os.cpu_count()} (the cores here; 0: all)'
RULES.update({SEED: lambda v: 0 <= v < 2**63, CORES: lambda v: 0 <= v <= os.cpu_count()})


def check_ranges(config, ranges):
    """ranges: {rule in RULES: 'key key ...'}. A ValueError names the first setting out of range."""
    for rule, keys in ranges.items():
        for key in keys.split():
            if not RULES[rule](config[key]):
                raise ValueError(f"{key}={config[key]!r}: must be {rule}")


# train.py's settings that take one of a few values
CHOICES = {'method': ('causal', 'bitune', 'bai', 'bitune_bai'), 'peft': ('none', *KINDS),
           'bitune_variant': tuple(VARIANTS), 'bai_loss': ('mse', 'cosine', 'ce'),
           'bai_schedule': ('constant', 'linear', 'exp'), 'bai_pivots': ('A', 'B'),
           'decay': ('cosine', 'linear', 'constant'), 'toy_op_position': ('after', 'before'),
           'dtype': ('auto', 'float32', 'bfloat16', 'float16')}


def check_train_config(c, defaults):
    """train.py's settings c (a namespace), checked at start-up; fills in out_dir's {braces}."""
    if any(f not in vars(c) for _, f, _, _ in string.Formatter().parse(c.out_dir) if f is not None):
        raise ValueError(f"out_dir={c.out_dir!r}: braces may only name settings, e.g. "
                         f"out-{{method}}-s{{seed}}")
    c.out_dir = c.out_dir.format(**vars(c))
    for key, allowed in CHOICES.items():
        if getattr(c, key) not in allowed:
            raise ValueError(f"{key}={getattr(c, key)!r}: choose one of {allowed}")
    check_ranges(vars(c), {
        '>= 1': 'max_iters batch_size gradient_accumulation_steps eval_interval eval_iters '
                'eval_examples n_layer n_head n_embd block_size lora_r toy_n_train toy_n_val',
        '>= 0': 'eval_max_new_tokens warmup_iters min_lr weight_decay grad_clip bai_lambda',
        '> 0': 'learning_rate adam_eps lora_alpha bitune_theta_init',
        'in [0, 1)': 'dropout lora_dropout beta1 beta2', SEED: 'seed toy_seed', CORES: 'threads'})
    if c.method == 'bitune_bai' and c.bai_pivots == 'B' and not VARIANTS[c.bitune_variant][2]:
        raise ValueError(f"bai_pivots='B' takes the pivots from Bitune's causal Pass B, which "
                         f"variant {c.bitune_variant!r} does not have; use bai_pivots='A'")
    if c.peft == 'ia3' and c.lora_targets != defaults['lora_targets']:
        raise ValueError("lora_targets does not apply to peft='ia3', which always scales the keys, "
                         "values and MLP activation of every block; leave it at its default")
    if c.peft != 'ia3' and not set(c.lora_targets.split(',')) <= {'c_attn', 'c_proj', 'c_fc'}:
        raise ValueError(f"lora_targets={c.lora_targets!r}: a comma-separated subset of "
                         f"c_attn,c_proj,c_fc")
    if c.init_from == 'scratch' and c.n_embd % c.n_head:
        raise ValueError(f"n_embd={c.n_embd} must be a multiple of n_head={c.n_head}")
    if c.init_from == 'scratch' and 'bai' in c.method and not has_hidden_layer(c.bai_layer,
                                                                                c.n_layer):
        raise ValueError(f"bai_layer={c.bai_layer} needs a block that a {c.n_layer}-block model "
                         f"lacks; use --bai_layer=-1 (after ln_f) or a block 0..{c.n_layer - 1}")
    if not c.out_dir:
        raise ValueError("out_dir is empty; name a folder for the run")

# -----------------------------------------------------------------------------
# device and dtype


def pick_device(name):
    """'auto' -> cuda, then mps, then cpu; another name is checked (a ValueError says why)."""
    mps = getattr(torch.backends, 'mps', None) is not None and torch.backends.mps.is_available()
    if name == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'mps' if mps else 'cpu'
    kind, _, index = name.partition(':')
    available = {'cpu': True, 'cuda': torch.cuda.is_available(), 'mps': mps}
    if kind not in available or (index and (kind != 'cuda' or not index.isdigit())):
        raise ValueError(f"device={name!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if not available[kind]:
        raise ValueError(f"device={name!r}, but this machine (or this build of torch) has no "
                         f"{kind} device; use --device=cpu or --device=auto")
    if index and int(index) >= torch.cuda.device_count():
        raise ValueError(f"device={name!r}, but there are only {torch.cuda.device_count()} CUDA "
                         f"device(s), numbered from cuda:0")
    return name


def pick_dtype(name, device):
    """'auto' -> bfloat16 on a CUDA GPU of compute capability 8.0 or newer (Ampere on), float16
    (with train.py's GradScaler) on an older one such as the T4 or V100, which report bfloat16 as
    supported but only emulate it, and float32 on the CPU and on MPS."""
    if name != 'auto':
        return name
    if not device.startswith('cuda'):
        return 'float32'
    return 'bfloat16' if torch.cuda.get_device_capability(device)[0] >= 8 else 'float16'
