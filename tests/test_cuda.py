"""On a CUDA machine: bf16 autocast, fused AdamW, torch.compile, the preallocated KV cache and
Bitune's generation, each against float32 results on the CPU. Skipped where there is no CUDA device.

    python -m pytest -q tests/test_cuda.py      # on the GPU machine
"""
import copy

import pytest
import torch

from helpers import randomize_adapters

if not torch.cuda.is_available():
    pytest.skip("no CUDA device: these tests compare CUDA runs with the CPU",
                allow_module_level=True)

from adapters import add_adapters, set_adapter  # noqa: E402
from bitune import Bitune  # noqa: E402
from data.tasks import collate  # noqa: E402
from model import GPT, GPTConfig, configure_optimizers  # noqa: E402
from train import compile_blocks  # noqa: E402


def models():
    """A small GPT with 'causal' and 'bidir' adapters moved off their start, and Bitune around
    it (CPU)."""
    torch.manual_seed(0)
    gpt = add_adapters(GPT(GPTConfig(n_layer=2, n_head=4, n_embd=64, vocab_size=40, block_size=64)),
                       names=('causal', 'bidir'))
    randomize_adapters(gpt)
    set_adapter(gpt, 'causal')
    return gpt, Bitune(gpt)


def batch(device, seed=0):
    g = torch.Generator().manual_seed(seed)
    ex = [{'prompt': torch.randint(1, 40, (int(p),), generator=g).tolist(),
           'answer': torch.randint(1, 40, (int(a),), generator=g).tolist()}
          for p, a in zip(torch.randint(3, 15, (8,), generator=g),
                          torch.randint(1, 9, (8,), generator=g))]
    return collate(ex, device)


def bitune_loss(model, b):
    return model(b)[0]


def test_bf16_autocast_loss_is_near_float32_on_the_cpu():
    _, cpu = models()
    gpu = copy.deepcopy(cpu).cuda()
    with torch.autocast('cuda', dtype=torch.bfloat16):
        loss = bitune_loss(gpu, batch('cuda'))
    assert loss.item() == pytest.approx(bitune_loss(cpu, batch('cpu')).item(), rel=2e-2)


def test_fused_adamw_steps_like_the_cpus():
    _, cpu = models()
    gpu = copy.deepcopy(cpu).cuda()
    opts = [configure_optimizers(m, 0.1, 1e-3, (0.9, 0.99), d)
            for m, d in ((cpu, 'cpu'), (gpu, 'cuda'))]
    assert opts[1].defaults['fused'] and not opts[0].defaults['fused']
    for _ in range(3):
        for m, opt, d in ((cpu, opts[0], 'cpu'), (gpu, opts[1], 'cuda')):
            bitune_loss(m, batch(d)).backward()
            opt.step()
            opt.zero_grad()
    for p, q in zip(cpu.parameters(), gpu.parameters()):
        torch.testing.assert_close(q.cpu(), p, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('method', ['causal', 'bitune'])
def test_compiled_step_matches_eager_float32_on_the_cpu(method):
    gpt, bitune = models()
    cpu = gpt if method == 'causal' else bitune
    gpu = copy.deepcopy(cpu).cuda()
    compile_blocks(gpu if method == 'causal' else gpu.gpt)  # as train.py --compile does
    for seed in range(3):  # batches of different widths: the blocks take any length
        b_cpu, b_gpu = batch('cpu', seed), batch('cuda', seed)
        if method == 'causal':
            want = cpu(b_cpu['idx'], b_cpu['targets'])[1]
            got = gpu(b_gpu['idx'], b_gpu['targets'])[1]
        else:
            want, got = bitune_loss(cpu, b_cpu), bitune_loss(gpu, b_gpu)
        assert got.item() == pytest.approx(want.item(), rel=1e-4)


@torch.no_grad()
def test_generation_with_the_static_cache_matches_the_cpu():
    gpt, bitune = models()
    idx = torch.randint(1, 40, (4, 9), generator=torch.Generator().manual_seed(0))
    valid = torch.arange(9)[None] >= torch.tensor([0, 6, 3, 1])[:, None]  # left padding
    idx = idx.masked_fill(~valid, 0)
    for cpu in (gpt.eval(), bitune.eval()):
        want = cpu.generate(idx, 20, temperature=0.0, valid=valid)
        got = copy.deepcopy(cpu).cuda().generate(idx.cuda(), 20, temperature=0.0,
                                                 valid=valid.cuda())
        assert torch.equal(got.cpu(), want)  # greedy tokens; float32 on both sides
