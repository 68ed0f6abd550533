"""
A run's folder (out_dir): train.py writes ckpt.pt (utils/checkpoint.py) and log.jsonl, one JSON
row per evaluation. This file keeps the folder and its log consistent; every reader of a log goes
through read_log.

    check_out_dir(c.out_dir, c.init_from, c.overwrite)   # train.py, before anything is written
    open_run(c.out_dir, resumed_at, c.overwrite)          # when the run starts writing
    rows = read_log(out_dir)                              # [] before the first evaluation
"""
import json
import math
import os
import platform

from utils.runtime import atomic_file

RUN_FILES = ('log.jsonl', 'ckpt.pt')


def check_out_dir(out_dir, init_from, overwrite):
    """Make out_dir, or say why it cannot be. A fresh run never replaces an earlier run's files
    unless asked to (overwrite=True)."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"out_dir={out_dir!r} is a file; choose a folder")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise ValueError(f"out_dir={out_dir!r} cannot be created ({e.strerror}); "
                         f"choose another folder") from None
    if not os.access(out_dir, os.W_OK):
        raise ValueError(f"out_dir={out_dir!r} is not writable; choose another folder")
    own = os.path.abspath(os.path.join(out_dir, 'ckpt.pt'))
    if init_from.endswith('.pt') and os.path.abspath(init_from) == own:
        raise ValueError(f"init_from={init_from!r} is this run's own checkpoint, "
                         f"which it would overwrite; to continue that run use --init_from=resume, "
                         f"else choose another out_dir")
    old = [f for f in RUN_FILES if os.path.exists(os.path.join(out_dir, f))]
    if 'log.jsonl' in old and 'ckpt.pt' not in old and (init_from == 'resume' or not overwrite):
        # killed (or out of disk) before its first checkpoint: nothing to resume, only to redo
        raise ValueError(f"out_dir={out_dir!r} holds a run that stopped before writing its first "
                         f"checkpoint (log.jsonl, no ckpt.pt), so it cannot be resumed: "
                         f"start it over with --overwrite=True (without --init_from=resume), "
                         f"or choose another out_dir")
    if old and init_from != 'resume' and not overwrite:
        raise ValueError(f"out_dir={out_dir!r} already holds a run ({', '.join(old)}). "
                         f"Continue it with --init_from=resume, "
                         f"start it over with --overwrite=True (deletes its log and checkpoint), "
                         f"or choose another out_dir")


def start_fresh(out_dir):
    """Delete an earlier run's log and checkpoint, and the .tmp a killed write left of them."""
    for f in RUN_FILES:
        for path in (os.path.join(out_dir, f), os.path.join(out_dir, f + '.tmp')):
            if os.path.exists(path):
                os.remove(path)


def read_log(out_dir):
    """The rows of out_dir/log.jsonl ([] if there is none yet). A run killed while writing a row
    leaves half a line, and only as the last one: it is left out. A broken line before the last, or
    a row without its iteration, is named with what to do."""
    path = os.path.join(out_dir, 'log.jsonl')
    if not os.path.exists(path):
        return []
    try:
        with open(path, encoding='utf-8') as f:
            lines = [line for line in f if line.strip()]
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a log written by train.py (not UTF-8 text); "
                         f"delete that run's folder and run it again") from None
    rows = []
    for i, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines):
                break  # half a row: the run was stopped while writing it
            raise ValueError(f"{path}, line {i}, is not JSON; delete that run's folder and run it "
                             f"again") from None
        if not isinstance(row, dict) or not isinstance(row.get('iter'), int):
            raise ValueError(f"{path}, line {i}, is not a row of train.py's log (no 'iter'); "
                             f"delete that line, or the run's folder to run it again")
        rows.append(row)
    return rows


def append_row(out_dir, row):
    """Add one evaluation row to out_dir/log.jsonl."""
    with open(os.path.join(out_dir, 'log.jsonl'), 'a', encoding='utf-8') as f:
        f.write(json.dumps(row) + '\n')


def trim_log(out_dir, iter_num):
    """Keep the log rows up to the checkpoint's iteration: a run killed after writing a row but
    before (or while) writing its checkpoint left rows the resumed run will write again."""
    if os.path.exists(os.path.join(out_dir, 'log.jsonl')):
        rows = [r for r in read_log(out_dir) if r['iter'] <= iter_num]
        with atomic_file(os.path.join(out_dir, 'log.jsonl')) as f:
            f.writelines(json.dumps(r) + '\n' for r in rows)


def open_run(out_dir, resumed_at, overwrite):
    """The folder as the run starts writing (train.py, the one process that writes): a resumed
    run's log loses the rows after its checkpoint (iteration resumed_at), which it will log again;
    a fresh run with overwrite=True deletes the earlier run's files (check_out_dir refused them
    otherwise)."""
    if resumed_at is not None:
        trim_log(out_dir, resumed_at)
    elif overwrite:
        start_fresh(out_dir)


class StopTraining(Exception):
    """The run cannot go on (the loss is no longer finite); the message says why and what to do."""


def check_finite(what, value, it, c, saved, bar, model=None):
    """Stop a run whose numbers are no longer finite, saying truthfully whether a good checkpoint
    exists. A checkpoint is only ever written of a finite model (model: its weights are checked)."""
    if not math.isfinite(value):
        problem = f"{what} became {value}"
    elif model is not None and not all(p.isfinite().all() for p in model.parameters()):
        problem = "the weights are no longer finite"
    else:
        return
    bar.close()  # before the error line, which would otherwise share a line with the bar
    kept = (f"{c.out_dir}/ckpt.pt keeps the last finite model (iteration {saved})" if saved
            else "no checkpoint was written")
    raise StopTraining(f"{problem} at iteration {it}; {kept}. Try a lower learning_rate, "
                       f"grad_clip=1.0, or dtype='float32'.")


def setup_of(device, dtype, torch):
    """What a run ran on, as train.py records it in its log's first row (a lab's share reports it):
    the device and dtype it resolved, torch's threads and version, the OS, the CPU or GPU."""
    cpu = platform.processor() or platform.machine()
    if os.path.exists('/proc/cpuinfo'):  # Linux names the CPU here
        with open('/proc/cpuinfo') as f:
            cpu = next((line.split(':', 1)[1].strip() for line in f
                        if line.startswith('model name')), cpu)
    gpu = torch.cuda.get_device_name(device) if device.startswith('cuda') else None
    return {'device': device, 'dtype': dtype, 'threads': torch.get_num_threads(),
            'torch': torch.__version__, 'os': f"{platform.system()} {platform.release()}",
            'processor': gpu or cpu}
