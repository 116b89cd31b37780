"""The E-step's data parallelism by hand: the ranks under `accelerate launch`, q's averaged gradients, and the
check that the replicas stayed identical. q is not wrapped in DDP because most of its passes are no-grad
sampling: its gradients are averaged here after each update's backward instead."""

from __future__ import annotations

import hashlib

import torch
from accelerate import PartialState


def process_state() -> PartialState:
    """This process's place under `accelerate launch` (rank, world size, device); on a machine without CUDA
    the ranks are CPU processes joined by gloo (accelerate takes a GPU launch config for no processes
    unless told `cpu`)."""
    return PartialState(cpu=not torch.cuda.is_available())


def average_gradients(model: torch.nn.Module, world: int) -> None:
    """Every rank's gradient becomes the mean over the `world` ranks, so the replicas take identical steps."""
    if world > 1:
        for param in model.parameters():
            torch.distributed.all_reduce(param.grad)
            param.grad /= world


def weights_checksum(model: torch.nn.Module) -> str:
    """SHA-256 of a model's weights (the ranks' replicas of q must agree)."""
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()
