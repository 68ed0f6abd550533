"""
Data-parallel training on several processes: PyTorch's torch.distributed and
DistributedDataParallel (DDP), one process per GPU (or per CPU slot), started by torchrun.

    # 4 processes on one machine
    torchrun --standalone --nproc_per_node=4 train.py config/lab_toy.py
    # one process: nothing here runs
    python train.py config/lab_toy.py

torchrun tells each process its place through environment variables (RANK, LOCAL_RANK,
WORLD_SIZE). Every process holds the whole model and takes its own slice of each batch; DDP
averages the gradients across processes during backward, so every copy takes the same
optimizer step. Without torchrun's variables each function below is the single-process case.
DDP itself: Li et al., "PyTorch Distributed: Experiences on Accelerating Data Parallel Training",
VLDB 2020, arXiv 2006.15704.
"""
import os
import sys
from contextlib import nullcontext
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from utils.runtime import launched  # True in a process started by torchrun


def setup(device):
    """Join the process group when started by torchrun. device: train.py's pick_device() answer.
    Returns (rank, world_size, device), the device now naming this process's own GPU."""
    if not launched():
        return 0, 1, device
    rank, local_rank, world = (int(os.environ['RANK']), int(os.environ['LOCAL_RANK']),
                               int(os.environ['WORLD_SIZE']))
    cuda = device.startswith('cuda')
    if cuda:
        # one GPU per process, numbered within its machine (cuda:N is ignored)
        device = f'cuda:{local_rank}'
        torch.cuda.set_device(device)
    elif device != 'cpu':
        raise ValueError(f"device={device!r}: several processes need CUDA (NCCL) or the CPU (gloo)")
    # A process that dies is noticed by torchrun, which stops the others. The timeout is the last
    # resort for a process that hangs instead: the others give up waiting for it after 30 minutes
    # (rank 0's evaluation, which the others wait for, must fit in it).
    dist.init_process_group('nccl' if cuda else 'gloo', timeout=timedelta(minutes=30),
                            device_id=torch.device(device) if cuda else None)
    if rank > 0:
        # one copy of every printed line; errors still reach stderr
        sys.stdout = open(os.devnull, 'w')
    return rank, world, device


def teardown():
    if dist.is_initialized():
        dist.destroy_process_group()


class LossOf(torch.nn.Module):
    """model plus the function that computes its training loss, as one module for DDP: its forward
    returns the loss, and DDP reads what forward returns to learn which parameters are in use."""

    def __init__(self, model, loss_fn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, *args):
        return self.loss_fn(self.model, *args)


def wrap(model, loss_fn, device, unused_parameters):
    """A callable (*args) -> loss_fn(model, *args); under torchrun it goes through DDP, which
    first copies rank 0's weights to every process.

    DDP averages each parameter's gradient across processes as soon as backward has produced it,
    so it must know which parameters will get none, or the step's all-reduce never completes (and
    the next step fails). Bitune has some by design: its last block reads the prompt with the
    'bidir' adapter, but only that pass's keys and values reach the answer, so the block's
    attention-output and MLP adapters never matter; the 'naive' and 'shared' variants do not use
    the 'bidir' adapter at all. For such models (unused_parameters=True) we pass
    find_unused_parameters=True: after each forward, DDP walks back through the autograd graph
    from what forward returned and marks every parameter it does not meet as done. LossOf makes
    that walk start from the loss alone (Bitune's forward also returns its prompt passes' hidden
    states, which do depend on those adapters), and hands loss_fn the model itself, whose
    attributes DDP would hide (BAI reads the embeddings). The walk costs time on every forward,
    so the other methods, whose every trainable parameter reaches the loss, go without it (and
    DDP reports it clearly if one does not).
    """
    if not dist.is_initialized():
        return lambda *args: loss_fn(model, *args)
    return DistributedDataParallel(LossOf(model, loss_fn),
                                   device_ids=[device] if device.startswith('cuda') else None,
                                   find_unused_parameters=unused_parameters)


def no_sync(ddp_model, sync):
    """Gradient accumulation: backward without the all-reduce, except when sync is True
    (the step's last micro-batch), whose all-reduce then sums everything accumulated."""
    return (ddp_model.no_sync() if isinstance(ddp_model, DistributedDataParallel) and not sync
            else nullcontext())


def all_sum(values):
    """A list of numbers summed over all processes (in float64: token counts stay exact)."""
    if not dist.is_initialized():
        return values
    # NCCL reduces GPU tensors only
    t = torch.tensor(values, dtype=torch.float64,
                     device='cuda' if dist.get_backend() == 'nccl' else 'cpu')
    dist.all_reduce(t)
    return t.tolist()


def barrier():
    """Wait here until every process arrives (e.g. while rank 0 evaluates and saves)."""
    if dist.is_initialized():
        dist.barrier()
