"""
Command-line and config-file overrides for the plain globals of train.py,
sample.py and bench.py, nanoGPT style:

    python train.py config/lab_toy.py --max_iters=500 --method=causal

A config file is plain Python assignments (see config/). Every key must already
exist in the script's defaults and keep its type (an int may stand for a
float), so a typo or a wrong type fails at start-up, not an hour into a run.
"""
import ast
import difflib
import os


def configure(defaults, argv):
    """Return a copy of `defaults` with the overrides in argv applied, in order."""
    config = dict(defaults)
    for arg in argv:
        if not arg.startswith('--'):
            if not os.path.isfile(arg):
                raise ValueError(f"config file {arg!r} not found (overrides are written --key=value)")
            namespace = {}
            with open(arg) as f:
                exec(compile(f.read(), arg, 'exec'), namespace)
            for key, value in namespace.items():
                if not key.startswith('_') and not callable(value) and not hasattr(value, '__file__'):
                    _set(config, key, value, where=arg)
        else:
            if '=' not in arg:
                raise ValueError(f"{arg!r}: write overrides as --key=value")
            key, text = arg[2:].split('=', 1)
            try:
                value = ast.literal_eval(text)  # numbers, True/False, None, quoted strings
            except (ValueError, SyntaxError):
                value = text                    # anything else is a plain string: --dataset=toy
            _set(config, key, value, where=arg)
    return config


def _set(config, key, value, where):
    if key not in config:
        close = difflib.get_close_matches(key, config, n=3)
        raise ValueError(f"unknown config key {key!r} (from {where})"
                         + (f"; did you mean {' or '.join(close)}?" if close else ""))
    old = config[key]
    if old is not None and value is not None:
        if isinstance(old, float) and type(value) is int:
            value = float(value)  # --learning_rate=1 means 1.0
        elif isinstance(old, str) and not isinstance(value, str):
            value = str(value)    # --init_from=2 would parse as an int; the key holds text
        elif type(value) is not type(old):
            raise ValueError(f"config key {key!r} (from {where}) must be {type(old).__name__}, "
                             f"got {value!r} ({type(value).__name__})")
    config[key] = value
