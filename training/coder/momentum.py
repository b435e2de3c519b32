"""Momentum (EMA) copies of encoders: slowly moving key encoders for the dynamic dictionaries."""

from __future__ import annotations

import copy

import torch
from torch import nn


def momentum_copy(module: nn.Module, share_frozen: bool = False) -> nn.Module:
    """A deep copy of `module` in eval mode whose parameters take no gradient.

    With `share_frozen`, parameters the online module does not train (a frozen BERT body) are
    shared instead of copied: they could never drift apart, and copying them costs memory.
    """
    memo = {id(p): p for p in module.parameters() if not p.requires_grad} if share_frozen else {}
    target = copy.deepcopy(module, memo)
    for p in target.parameters():
        p.requires_grad_(False)
    return target.eval()


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, parameter by parameter.

    Parameters the online model does not train never change, so they are skipped (a frozen BERT
    body then costs nothing); buffers are copied as they are.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    online_params = dict(online.named_parameters())
    for name, t in target.named_parameters():
        o = online_params[name]
        if o.requires_grad:
            t.mul_(momentum).add_(o.detach(), alpha=1.0 - momentum)
    online_buffers = dict(online.named_buffers())
    for name, b in target.named_buffers():
        b.copy_(online_buffers[name])


class MomentumEncoder(nn.Module):
    """The EMA copy of one online encoder; always in eval mode, never takes gradients.

    Frozen parameters are shared with the online encoder and left out of this module's
    state_dict (the online model saves them), so a resumable run does not store them twice.
    """

    def __init__(self, online: nn.Module, momentum: float = 0.995) -> None:
        super().__init__()
        self.momentum = momentum
        self.target = momentum_copy(online, share_frozen=True)
        online_ids = {id(p) for p in online.parameters()}
        self._shared = {n for n, p in self.target.named_parameters() if id(p) in online_ids}
        self.register_state_dict_post_hook(_drop_shared)
        self.register_load_state_dict_pre_hook(_fill_shared)

    def train(self, mode: bool = True) -> MomentumEncoder:
        # Keys must be deterministic (no dropout) whatever mode the owning model is in.
        super().train(mode)
        self.target.eval()
        return self

    def update(self, online: nn.Module) -> None:
        ema_update(self.target, online, self.momentum)

    @torch.no_grad()
    def forward(self, *args, **kwargs):
        return self.target(*args, **kwargs)


def _drop_shared(module: MomentumEncoder, state_dict, prefix, local_metadata) -> None:
    for name in module._shared:
        state_dict.pop(f"{prefix}target.{name}", None)


def _fill_shared(module: MomentumEncoder, state_dict, prefix, *args) -> None:
    params = dict(module.target.named_parameters())
    for name in module._shared:
        state_dict.setdefault(f"{prefix}target.{name}", params[name].detach())
