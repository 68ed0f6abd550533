"""
Command-line and config-file overrides for the plain globals of train.py,
sample.py and bench.py, nanoGPT style; the checks of those settings
(check_train_config, check_ranges, pick_device); and the way every script
reports a failure: one line that starts with `error:` (run_main), including a
Ctrl-C, a SIGTERM (catch_signals) and a full disk; and the one way files are
written whole or not at all (atomic_file).

    python train.py config/lab_toy.py --max_iters=500 --method=causal

A config file is Python, run with exec(): it can do anything a program can, so
only pass config files you trust (those in config/ are plain assignments).
Every key must already exist in the script's defaults and keep its type (an int
may stand for a float), so a typo or a wrong type fails at start-up, not an
hour into a run.
"""
import ast
import difflib
import errno
import math
import os
import signal
import sys
import types
from contextlib import contextmanager


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
        if not arg.startswith('--'):
            if not os.path.isfile(arg):
                what = 'is a directory, not' if os.path.isdir(arg) else 'not found; expected'
                raise ValueError(f"config file {arg!r} {what} a Python file of settings "
                                 f"(overrides are written --key=value)")
            namespace = {}
            try:
                with open(arg) as f:
                    exec(compile(f.read(), arg, 'exec'), namespace)
            except Exception as e:  # the file is Python: whatever goes wrong in it is the file's mistake
                raise ValueError(f"config file {arg!r} failed to run: {type(e).__name__}: {e}") from None
            for key, value in namespace.items():
                if not key.startswith('_') and not callable(value) and not isinstance(value, types.ModuleType):
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
    if old is not None:
        if isinstance(old, float) and type(value) is int:
            value = float(value)  # --learning_rate=1 means 1.0
        elif isinstance(old, str) and value is not None and not isinstance(value, str):
            value = str(value)    # --init_from=2 would parse as an int; the key holds text
        elif type(value) is not type(old):  # None included: a setting with a value needs one
            raise ValueError(f"config key {key!r} (from {where}) must be {type(old).__name__}, "
                             f"got {value!r} ({type(value).__name__})")
        if isinstance(value, float) and not math.isfinite(value):  # 1e999 parses as inf
            raise ValueError(f"config key {key!r} (from {where}) must be a finite number, got {value}")
    config[key] = value


# how to go on after an interruption or a full disk; each script names its own (catch_signals)
HOW_TO_CONTINUE = ''


def catch_signals(how_to_continue):
    """Called first thing by a script started from the command line, before its slow imports (torch
    takes seconds to load): from then on Ctrl-C or SIGTERM (from `kill`, a job scheduler or torchrun)
    ends it with one line, `error: interrupted; <how_to_continue>`, never a traceback. Until run_main
    starts main() the process just exits: nothing has been written yet, and an interrupt raised inside
    a library's import can come out as some other error. Inside main() both raise KeyboardInterrupt,
    so the clean-up runs (atomic_file removes its .tmp) before run_main prints the line."""
    global HOW_TO_CONTINUE
    HOW_TO_CONTINUE = how_to_continue
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _exit_now)


def _exit_now(signum, frame):
    print(f"error: {describe(KeyboardInterrupt(_name(signum)))}", file=sys.stderr, flush=True)
    os._exit(130)  # the exit status of an interrupted program


def _interrupt(signum, frame):
    raise KeyboardInterrupt(_name(signum))


def _name(signum):
    return '' if signum == signal.SIGINT else signal.Signals(signum).name  # Ctrl-C needs no name


def _debug():
    return os.environ.get('NANOBIDIR_DEBUG', '') not in ('', '0')


def run_main(main, *known):
    """Run a script's main() for a person at a terminal: a failure prints one line, `error: ...`,
    and exits with status 1 (130 for Ctrl-C or SIGTERM). NANOBIDIR_DEBUG=1 shows the whole traceback instead."""
    if signal.getsignal(signal.SIGINT) is _exit_now:  # catch_signals ran: from here on, interrupts clean up
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _interrupt)
    try:
        return main()
    except (KeyboardInterrupt, Exception) as e:
        if _debug():
            raise
        from utils.distributed import error_line, lost_peer  # under torchrun, only the first process to fail reports
        line = error_line(lost_peer(e) or describe(e, known))
        if line:
            print(line, file=sys.stderr)
        sys.exit(130 if isinstance(e, KeyboardInterrupt) else 1)


def describe(e, known=()):
    """One line about an exception. Bad input (a ValueError raised by this project's code, an OSError
    such as a missing file or no network, or one of `known`) carries a message that says what was
    wrong and what to do. Anything else is a bug rather than the user's mistake (a ValueError from
    inside torch included): its type goes with the message."""
    then = f"; {HOW_TO_CONTINUE}" if HOW_TO_CONTINUE else ""
    if isinstance(e, KeyboardInterrupt):
        return f"interrupted{f' ({e})' if str(e) else ''}{then}"
    if disk_full(e):
        return (f"the disk is full{f' (writing {e.filename})' if e.filename else ''}: free space on it (old runs' "
                f"out_dir folders, checkpoints, downloads){then}")
    if isinstance(e, OSError) and e.strerror and e.filename:
        text = f"{e.strerror}: {e.filename}"  # 'No such file or directory: x' rather than '[Errno 2] ...'
    else:
        text = str(e) or type(e).__name__
    text = ' '.join(text.split())
    if isinstance(e, (OSError, *known)) or (isinstance(e, ValueError) and _raised_here(e)):
        return text
    if isinstance(e, MemoryError) or type(e).__name__ == 'OutOfMemoryError':  # torch's, on a GPU
        return (f"out of memory ({text[:300]}); use a smaller batch_size (gradient_accumulation_steps keeps "
                f"the step's size), block_size or model")
    return (f"unexpected {type(e).__name__}: {text} (this looks like a bug; rerun with NANOBIDIR_DEBUG=1 "
            f"to see where it happened)")


def disk_full(e):
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def atomic_file(path, mode='w'):
    """Write path whole or not at all: into path.tmp, renamed to path once complete. os.replace is atomic,
    so a reader, or a run killed mid-write, finds the old file or the new one, never half of one. On any
    failure the .tmp is removed, so that after a full disk our leftovers do not keep it full. A full
    disk's OSError names path (torch.save's writes name no file)."""
    tmp = path + '.tmp'
    try:
        with open(tmp, mode) as f:
            yield f
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if disk_full(e) and not e.filename:
            raise OSError(e.errno, e.strerror, path) from e
        raise


def _raised_here(e):
    """Whether e comes from a line of this project, whose messages are written for the user."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next  # the innermost frame: where it was raised
    where = os.path.abspath(tb.tb_frame.f_code.co_filename) if tb else __file__
    return where.startswith(os.path.dirname(os.path.abspath(__file__)) + os.sep) and 'site-packages' not in where


def check_device(name):
    """name, if torch can use that device on this machine; else a ValueError that says what to pass."""
    import torch  # here, so that reading settings never needs torch
    kind, _, index = name.partition(':')
    available = {'cpu': True, 'cuda': torch.cuda.is_available(),
                 'mps': getattr(torch.backends, 'mps', None) is not None and torch.backends.mps.is_available()}
    if kind not in available or (index and (kind != 'cuda' or not index.isdigit())):
        raise ValueError(f"device={name!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if not available[kind]:
        raise ValueError(f"device={name!r}, but this machine (or this build of torch) has no {kind} device; "
                         f"use --device=cpu or --device=auto")
    if index and int(index) >= torch.cuda.device_count():
        raise ValueError(f"device={name!r}, but there are only {torch.cuda.device_count()} CUDA device(s), "
                         f"numbered from cuda:0")
    return name


RULES = {'>= 1': lambda v: v >= 1, '>= 0': lambda v: v >= 0, '> 0': lambda v: v > 0,
         'in [0, 1)': lambda v: 0 <= v < 1}


def check_ranges(config, ranges):
    """ranges: {rule in RULES: 'key key ...'}. A ValueError names the first setting that breaks its rule."""
    for rule, keys in ranges.items():
        for key in keys.split():
            if not RULES[rule](config[key]):
                raise ValueError(f"{key}={config[key]!r}: must be {rule}")


def check_train_config(c, defaults):
    """train.py's settings c (a namespace): fail at start-up, with what to do, rather than deep inside a
    run. Fills in out_dir's {braces}. defaults: train.py's DEFAULTS."""
    from bitune import VARIANTS  # imported here: these need torch, the rest of this file does not
    from adapters import KINDS
    from model import has_hidden_layer
    try:
        c.out_dir = c.out_dir.format(**vars(c))
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"out_dir={c.out_dir!r}: braces may only name settings, e.g. {{method}} ({e!r})") from None
    choices = {'method': ('causal', 'bitune', 'bai', 'bitune_bai'), 'peft': ('none',) + KINDS,
               'decay': ('cosine', 'linear', 'constant'), 'dtype': ('auto', 'float32', 'bfloat16', 'float16'), 'toy_op_position': ('after', 'before'),
               'bai_loss': ('mse', 'cosine', 'ce'), 'bai_schedule': ('constant', 'linear', 'exp'),
               'bai_pivots': ('A', 'B'), 'bitune_variant': tuple(VARIANTS)}
    for key, allowed in choices.items():
        if getattr(c, key) not in allowed:
            raise ValueError(f"{key}={getattr(c, key)!r}: choose one of {allowed}")
    if c.method == 'bitune_bai' and c.bai_pivots == 'B' and not VARIANTS[c.bitune_variant][2]:
        raise ValueError(f"bai_pivots='B' takes the pivots from Bitune's causal Pass B, which variant "
                         f"{c.bitune_variant!r} does not have (it reads the prompt once, in Pass A); "
                         f"use bai_pivots='A' or a variant with Pass B")
    if c.peft == 'ia3' and c.lora_targets != defaults['lora_targets']:
        raise ValueError("lora_targets does not apply to peft='ia3': IA3 always scales the keys, values and "
                         "MLP activation of every block. Leave lora_targets at its default.")
    check_ranges(vars(c), {
        '>= 1': 'max_iters batch_size gradient_accumulation_steps eval_interval eval_iters eval_examples '
                      'n_layer n_head n_embd block_size lora_r toy_n_train toy_n_val',
        '>= 0': 'eval_max_new_tokens warmup_iters min_lr weight_decay grad_clip bai_lambda threads',
        '> 0': 'learning_rate adam_eps lora_alpha bitune_theta_init',
        'in [0, 1)': 'dropout lora_dropout beta1 beta2'})
    if c.init_from == 'scratch' and c.n_embd % c.n_head:
        raise ValueError(f"n_embd={c.n_embd} must be a multiple of n_head={c.n_head} (each head gets n_embd/n_head)")
    if c.init_from == 'scratch' and 'bai' in c.method and not has_hidden_layer(c.bai_layer, c.n_layer):
        raise ValueError(f"bai_layer={c.bai_layer} needs a block that a {c.n_layer}-block model lacks "
                         f"(-2, the default, is the block before the last); use --bai_layer=-1 (after ln_f) "
                         f"or a block index 0..{c.n_layer - 1}")
    if c.peft != 'ia3' and not set(c.lora_targets.split(',')) <= {'c_attn', 'c_proj', 'c_fc'}:
        raise ValueError(f"lora_targets={c.lora_targets!r}: a comma-separated subset of c_attn,c_proj,c_fc")
    if not c.out_dir:
        raise ValueError("out_dir is empty; name a folder for the run")


def pick_device(name):
    """'auto' -> cuda, then mps, then cpu; any other name is checked (check_device)."""
    import torch
    if name != 'auto':
        return check_device(name)
    if torch.cuda.is_available():
        return 'cuda'
    if getattr(torch.backends, 'mps', None) and torch.backends.mps.is_available():
        return 'mps'
    return 'cpu'
