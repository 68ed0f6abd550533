"""
Building a model from a run's configuration, and saving/loading checkpoints.

Shared by train.py (start and resume) and sample.py, so a checkpoint always
comes back as the same model it was saved from.

A checkpoint is a dict of plain types and tensors, so it loads with
torch.load(weights_only=True): no pickled classes, nothing that runs code.
When the base is frozen (peft 'lora', 'dora' or 'ia3' on a pretrained or saved
base) only the adapters and Bitune's mixing scalars are stored, and the base is
rebuilt from `init_from`: a GPT-2 adapter checkpoint is a few MB instead of 500.
It also stores a fingerprint of that base, so adapters are never put on a base
they were not trained with.

A run's folder (out_dir) holds ckpt.pt and log.jsonl (utils/rundir.py).
"""
import errno
import hashlib
import os
import shutil

import torch

from utils.runtime import atomic_file
from adapters import (adapted_layers, add_adapters, is_adapter_param, mark_only_adapters_trainable,
                      set_adapter)
import bitune
from model import GPT, GPTConfig
from utils.weights import GPT2_NAMES


def adapter_names(method, peft):
    """Which adapters a method needs. Bitune reads the prompt with two sets of weights:
    under 'lora', 'dora' or 'ia3' both are adapters of that kind; under 'none' the causal
    passes use the (trainable) base itself and only the bidirectional pass gets an adapter
    (a LoRA) on top of it."""
    if method.startswith('bitune'):
        return ('causal', 'bidir') if peft != 'none' else ('bidir',)
    return ('causal',) if peft != 'none' else ()


def base_model(cfg, meta, device='cpu'):
    """The GPT a run starts from: random ('scratch'), GPT-2 (a name or a directory), or a saved
    full checkpoint."""
    src = cfg['init_from']
    if src in ('scratch', 'resume'):
        conf = GPTConfig(block_size=cfg['block_size'], vocab_size=meta['vocab_size'],
                         n_layer=cfg['n_layer'], n_head=cfg['n_head'], n_embd=cfg['n_embd'],
                         dropout=cfg['dropout'], bias=cfg['bias'])
        return GPT(conf)
    if src in GPT2_NAMES or os.path.isdir(src):
        # GPT-2's embedding rows are BPE tokens: another vocabulary reads garbage
        if meta.get('tokenizer') != 'gpt2':
            raise ValueError(f"init_from={src!r} is a GPT-2 model, which reads GPT-2's BPE tokens, "
                             f"but dataset '{meta['name']}' uses the {meta.get('tokenizer')!r} "
                             f"tokenizer; train from scratch, "
                             f"or use a dataset prepared with the GPT-2 tokenizer")
        gpt = GPT.from_pretrained(src, dropout=cfg['dropout'])
        if gpt.config.vocab_size < meta['vocab_size']:
            raise ValueError(f"init_from={src!r} has {gpt.config.vocab_size} token embeddings "
                             f"but dataset '{meta['name']}' has {meta['vocab_size']} tokens")
        return gpt
    # a base trained by an earlier run (e.g. pretrained on one toy operation)
    if src.endswith('.pt'):
        ckpt = load_checkpoint(src, device)
        if (ckpt['meta']['vocab_size'] != meta['vocab_size']
                or ckpt['meta'].get('itos') != meta.get('itos')):
            raise ValueError(f"{src} was trained on another vocabulary than dataset "
                             f"'{meta['name']}'; "
                             f"use the same dataset family (e.g. toy with the same n_symbols)")
        gpt = GPT(GPTConfig(**{**ckpt['model_args'], 'dropout': cfg['dropout']}))
        saved = ckpt['config']
        # its base is frozen (random, for a scratch run): what it learned is adapters
        if saved['peft'] != 'none':
            sd = folded_state(src, device)
            print(f"init_from={src}: its trained {saved['peft']} adapter is folded into the base "
                  f"weights"
                  + (" (Bitune's 'bidir' prompt adapter and mixing are left out)"
                     if 'bitune' in saved['method'] else ""))
        else:
            if saved['method'].startswith('bitune'):
                print(f"init_from={src}: the base weights only "
                      f"(Bitune's 'bidir' prompt adapter and mixing are left out)")
            sd = {k[len('gpt.'):] if k.startswith('gpt.') else k: v
                  for k, v in ckpt['model'].items()}
        gpt.load_state_dict({k: v for k, v in sd.items() if not is_adapter_param(k)})
        return gpt
    raise ValueError(f"init_from={src!r}: use 'scratch', 'resume', a GPT-2 name {GPT2_NAMES}, "
                     f"a directory with config.json + model.safetensors, or a .pt checkpoint")


def folded_state(path, device='cpu'):
    """The weights of a plain GPT that reads left to right as checkpoint path's model does: its
    'causal' adapter (the one of every causal pass, Bitune's answer pass included) folded into the
    weights (AdaptedLinear.merge). An adapter-only checkpoint gets its base back from its own
    init_from first; one of a scratch run holds its random base (is_adapter_only), so either can be
    fine-tuned further."""
    _, gpt, _ = model_from_checkpoint(path, device)
    for layer in adapted_layers(gpt):
        if 'causal' in layer.kind:
            layer.merge('causal')
    return gpt.state_dict()


def build_model(cfg, meta, device='cpu'):
    """(model, gpt): the model to train/sample (a GPT, or Bitune wrapping it) and the GPT in it."""
    gpt = base_model(cfg, meta, device)
    names = adapter_names(cfg['method'], cfg['peft'])
    if names:
        add_adapters(gpt, names=names, kind='lora' if cfg['peft'] == 'none' else cfg['peft'],
                     r=cfg['lora_r'], alpha=cfg['lora_alpha'], dropout=cfg['lora_dropout'],
                     targets=tuple(cfg['lora_targets'].split(',')))
    if cfg['peft'] != 'none':
        mark_only_adapters_trainable(gpt)
        set_adapter(gpt, 'causal')  # the ordinary left-to-right adapter; Bitune switches per pass
    model = gpt
    if cfg['method'].startswith('bitune'):
        model = bitune.Bitune(gpt, variant=cfg['bitune_variant'],
                              theta_init=cfg['bitune_theta_init'],
                              causal_adapter='causal' if cfg['peft'] != 'none' else None,
                              bidir_adapter='bidir')
    return model.to(device), gpt


def is_adapter_only(cfg):
    # a random frozen base ('scratch' + adapters) cannot be rebuilt from a name: it is saved whole
    return cfg['peft'] != 'none' and cfg['init_from'] not in ('scratch', 'resume')


def state_to_save(model, cfg):
    sd = model.state_dict()
    if is_adapter_only(cfg):
        sd = {k: v for k, v in sd.items() if is_adapter_param(k)}
    return sd


def save_checkpoint(path, ckpt):
    """Write to a temporary file, then rename: a run killed mid-write (or a full disk) never leaves
    a broken checkpoint, and the previous one stays until the new one is complete."""
    with atomic_file(path, 'wb') as f:
        try:
            torch.save(ckpt, f)
        except RuntimeError as e:
            # torch's zip writer reports a full disk as its own RuntimeError ("unexpected pos",
            # "file write failed"), without an errno: ask the disk whether it is full
            if shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free < 2**20:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path) from e
            raise


def load_checkpoint(path, device='cpu'):
    if not os.path.isfile(path):
        inside = os.path.join(path, 'ckpt.pt')
        raise FileNotFoundError(f"no checkpoint at {path}; "
                                + (f"did you mean {inside}?" if os.path.isfile(inside)
                                   else "train one first (python train.py --out_dir=...)"))
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a nanoBidir checkpoint, or it is damaged "
                         f"({type(e).__name__}: {e})") from e
    if (not isinstance(ckpt, dict)
            or not {'model', 'adapter_only', 'config', 'model_args', 'meta'} <= set(ckpt)):
        raise ValueError(f"{path} is a torch file but not a checkpoint written by train.py "
                         f"(it lacks the model's settings); pass the ckpt.pt of a run")
    return ckpt


def base_fingerprint(model, adapter_keys):
    """A short hash of the frozen base: the state dict without adapter_keys, every tensor sampled
    at about 1000 evenly spaced values. Cheap even for GPT-2, and two different bases of the same
    shape (another seed, another fine-tune) differ in the sampled values."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        if k not in adapter_keys:
            flat = v.detach().reshape(-1)
            h.update(k.encode()
                     + flat[::max(1, flat.numel() // 1000)].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def model_from_checkpoint(path, device='cpu'):
    """Rebuild the saved model (base + adapters + mixing scalars); returns (model, gpt, ckpt)."""
    ckpt = load_checkpoint(path, device)
    cfg = dict(ckpt['config'])
    if ckpt['adapter_only']:
        base = cfg['init_from']
        if base.endswith('.pt') and not os.path.isfile(base):
            raise FileNotFoundError(f"{path} holds adapters for the base {base}, "
                                    f"which is not there any more; "
                                    f"put that checkpoint back where it was")
        model, gpt = build_model(cfg, ckpt['meta'], device)
        missing, unexpected = model.load_state_dict(ckpt['model'], strict=False)
        lost = [k for k in missing if is_adapter_param(k)]
        if lost or unexpected:
            raise ValueError(f"{path} does not fit the model its config describes: "
                             f"missing {lost[:4]}, unexpected {unexpected[:4]}")
        if ('base_fingerprint' in ckpt
                and ckpt['base_fingerprint'] != base_fingerprint(model, ckpt['model'])):
            raise ValueError(f"{path} holds adapters trained on another base than the one {base} "
                             f"holds now (same shapes, other weights); "
                             f"use the base the adapters were trained on")
    else:
        # the checkpoint holds every weight: build the shape, then load
        cfg['init_from'] = 'scratch'
        for k in ('block_size', 'n_layer', 'n_head', 'n_embd', 'bias'):
            cfg[k] = ckpt['model_args'][k]
        model, gpt = build_model(cfg, ckpt['meta'], device)
        model.load_state_dict(ckpt['model'])
    return model, gpt, ckpt


def save_run(path, model, gpt, optimizer, iter_num, run_cfg, meta, data_rng):
    """Everything a resumed run needs to continue exactly: weights, optimizer, iteration and
    random states."""
    rng = {'data': data_rng.get_state(), 'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        rng['cuda'] = torch.cuda.get_rng_state()
    sd = state_to_save(model, run_cfg)
    extra = {'base_fingerprint': base_fingerprint(model, sd)} if is_adapter_only(run_cfg) else {}
    save_checkpoint(path, {
        'model': sd, 'adapter_only': is_adapter_only(run_cfg), **extra,
        'optimizer': optimizer.state_dict(), 'iter_num': iter_num,
        'config': run_cfg, 'model_args': vars(gpt.config), 'meta': meta, 'rng': rng})


# settings a resumed run may change: they cannot change its numbers (out_dir and data_dir are
# places: a run or its data moved to another folder still resumes; the data itself is compared
# through its meta)
FREE_ON_RESUME = ('init_from', 'max_iters', 'eval_interval', 'device', 'compile', 'out_dir',
                  'data_dir', 'overwrite')


def resume_config(ckpt, cfg, meta):
    """The saved run's settings; only those that cannot change the result may differ now."""
    saved = ckpt['config']
    changed = {k: (saved[k], cfg.get(k)) for k in saved
               if k not in FREE_ON_RESUME and saved[k] != cfg.get(k)}
    if changed:
        raise ValueError(f"resume: these settings differ from the saved run {changed}; "
                         f"pass the same config (only {', '.join(FREE_ON_RESUME[1:])} may change)")
    if ckpt['meta'] != meta:
        raise ValueError(f"resume: dataset '{meta['name']}' is not the one the run was trained on "
                         f"(its meta.json differs); point data_dir at the same prepared data")
    return {**saved, **{k: cfg[k] for k in FREE_ON_RESUME[1:] if k in cfg}}


def new_or_resumed(cfg, meta):
    """(model, gpt, the run's settings, checkpoint): a new model for a fresh run (checkpoint None),
    or for init_from='resume' the model of out_dir/ckpt.pt with the settings it was trained with
    (resume_config says which may differ now); restore_state then puts the rest back."""
    if cfg['init_from'] != 'resume':
        return (*build_model(cfg, meta), dict(cfg), None)
    model, gpt, ckpt = model_from_checkpoint(os.path.join(cfg['out_dir'], 'ckpt.pt'), 'cpu')
    print(f"resuming the run in {cfg['out_dir']} from its checkpoint at iteration "
          f"{ckpt['iter_num']}")
    return model, gpt, resume_config(ckpt, cfg, meta), ckpt


def restore_state(ckpt, optimizer, data_rng):
    """Restore the optimizer and the random generators of the saved run; returns its iteration."""
    optimizer.load_state_dict(ckpt['optimizer'])
    data_rng.set_state(ckpt['rng']['data'])
    torch.set_rng_state(ckpt['rng']['torch'])  # dropout draws from the global RNG
    if torch.cuda.is_available() and 'cuda' in ckpt['rng']:
        torch.cuda.set_rng_state(ckpt['rng']['cuda'])
    return ckpt['iter_num']
