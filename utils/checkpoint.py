"""
Building a model from a run's configuration, and saving/loading checkpoints.

Shared by train.py (start and resume) and sample.py, so a checkpoint always
comes back as the same model it was saved from.

A checkpoint is a dict of plain types and tensors, so it loads with
torch.load(weights_only=True): no pickled classes, nothing that runs code.
When the base is frozen (peft 'lora', 'dora' or 'ia3' on a pretrained or saved
base) only the adapters and Bitune's mixing scalars are stored, and the base is
rebuilt from `init_from`: a GPT-2 adapter checkpoint is a few MB instead of 500.
"""
import os

import torch

from model import GPT, GPTConfig, add_adapters, is_adapter_param, mark_only_adapters_trainable, set_adapter
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
    """The GPT a run starts from: random ('scratch'), GPT-2 (a name or a directory), or a saved full checkpoint."""
    src = cfg['init_from']
    if src in ('scratch', 'resume'):
        conf = GPTConfig(block_size=cfg['block_size'], vocab_size=meta['vocab_size'], n_layer=cfg['n_layer'],
                         n_head=cfg['n_head'], n_embd=cfg['n_embd'], dropout=cfg['dropout'], bias=cfg['bias'])
        return GPT(conf)
    if src in GPT2_NAMES or os.path.isdir(src):
        return GPT.from_pretrained(src, dropout=cfg['dropout'])
    if src.endswith('.pt'):  # a base trained by an earlier run (e.g. pretrained on one toy operation)
        ckpt = load_checkpoint(src, device)
        if ckpt['adapter_only']:
            raise ValueError(f"{src} holds adapters only; fine-tune from a checkpoint trained with peft='none'")
        if ckpt['meta']['vocab_size'] != meta['vocab_size'] or ckpt['meta'].get('itos') != meta.get('itos'):
            raise ValueError(f"{src} was trained on another vocabulary than dataset '{meta['name']}'; "
                             f"use the same dataset family (e.g. toy with the same n_symbols)")
        gpt = GPT(GPTConfig(**{**ckpt['model_args'], 'dropout': cfg['dropout']}))
        sd = {k[len('gpt.'):] if k.startswith('gpt.') else k: v for k, v in ckpt['model'].items()}
        gpt.load_state_dict({k: v for k, v in sd.items() if not is_adapter_param(k)})
        return gpt
    raise ValueError(f"init_from={src!r}: use 'scratch', 'resume', a GPT-2 name {GPT2_NAMES}, "
                     f"a directory with config.json + model.safetensors, or a .pt checkpoint")


def build_model(cfg, meta, device='cpu'):
    """(model, gpt): the model to train/sample (a GPT, or Bitune wrapping it) and the GPT inside."""
    gpt = base_model(cfg, meta, device)
    names = adapter_names(cfg['method'], cfg['peft'])
    if names:
        add_adapters(gpt, names=names, kind='lora' if cfg['peft'] == 'none' else cfg['peft'], r=cfg['lora_r'],
                     alpha=cfg['lora_alpha'], dropout=cfg['lora_dropout'], targets=tuple(cfg['lora_targets'].split(',')))
    if cfg['peft'] != 'none':
        mark_only_adapters_trainable(gpt)
        set_adapter(gpt, 'causal')  # the ordinary left-to-right adapter; Bitune switches per pass
    model = gpt
    if cfg['method'].startswith('bitune'):
        import bitune
        model = bitune.Bitune(gpt, variant=cfg['bitune_variant'], theta_init=cfg['bitune_theta_init'],
                              causal_adapter='causal' if cfg['peft'] != 'none' else None, bidir_adapter='bidir')
    return model.to(device), gpt


def is_adapter_only(cfg):
    # a random frozen base ('scratch' + adapters) cannot be rebuilt from a name, so it is saved whole
    return cfg['peft'] != 'none' and cfg['init_from'] not in ('scratch', 'resume')


def state_to_save(model, cfg):
    sd = model.state_dict()
    if is_adapter_only(cfg):
        sd = {k: v for k, v in sd.items() if is_adapter_param(k)}
    return sd


def save_checkpoint(path, ckpt):
    """Write to a temporary file, then rename: a run killed mid-write never leaves a broken checkpoint."""
    tmp = path + '.tmp'
    torch.save(ckpt, tmp)
    os.replace(tmp, path)  # atomic on POSIX and Windows


def load_checkpoint(path, device='cpu'):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}; train one first (python train.py --out_dir=...)")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a nanoBidir checkpoint ({type(e).__name__}: {e})") from e


def model_from_checkpoint(path, device='cpu'):
    """Rebuild the saved model (base + adapters + mixing scalars); returns (model, gpt, ckpt)."""
    ckpt = load_checkpoint(path, device)
    cfg = dict(ckpt['config'])
    if ckpt['adapter_only']:
        model, gpt = build_model(cfg, ckpt['meta'], device)
        missing, unexpected = model.load_state_dict(ckpt['model'], strict=False)
        lost = [k for k in missing if is_adapter_param(k)]
        if lost or unexpected:
            raise ValueError(f"{path} does not fit the model its config describes: missing {lost[:4]}, "
                             f"unexpected {unexpected[:4]}")
    else:
        cfg['init_from'] = 'scratch'  # the checkpoint holds every weight: build the shape, then load
        for k in ('block_size', 'n_layer', 'n_head', 'n_embd', 'bias'):
            cfg[k] = ckpt['model_args'][k]
        model, gpt = build_model(cfg, ckpt['meta'], device)
        model.load_state_dict(ckpt['model'])
    return model, gpt, ckpt


def save_run(path, model, gpt, optimizer, iter_num, run_cfg, meta, data_rng):
    """Everything a resumed run needs to continue exactly: weights, optimizer, iteration and random states."""
    rng = {'data': data_rng.get_state(), 'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        rng['cuda'] = torch.cuda.get_rng_state()
    save_checkpoint(path, {
        'model': state_to_save(model, run_cfg), 'adapter_only': is_adapter_only(run_cfg),
        'optimizer': optimizer.state_dict(), 'iter_num': iter_num,
        'config': run_cfg, 'model_args': vars(gpt.config), 'meta': meta, 'rng': rng})


def resume_config(saved, cfg):
    """The saved run's settings; only those that cannot change the result may differ now."""
    changed = {k: (saved[k], cfg[k]) for k in saved
               if k not in ('init_from', 'max_iters', 'eval_interval', 'device', 'compile') and saved[k] != cfg[k]}
    if changed:
        raise ValueError(f"resume: these settings differ from the saved run {changed}; pass the same "
                         f"config (only max_iters, eval_interval, device and compile may change)")
    return {**saved, 'max_iters': cfg['max_iters'], 'eval_interval': cfg['eval_interval']}


def restore_state(ckpt, optimizer, data_rng):
    """Put the optimizer and the random generators back where the saved run was; returns its iteration."""
    optimizer.load_state_dict(ckpt['optimizer'])
    data_rng.set_state(ckpt['rng']['data'])
    torch.set_rng_state(ckpt['rng']['torch'])  # dropout draws from the global RNG
    if torch.cuda.is_available() and 'cuda' in ckpt['rng']:
        torch.cuda.set_rng_state(ckpt['rng']['cuda'])
    return ckpt['iter_num']
