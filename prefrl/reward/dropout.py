"""Inverted dropout several times faster than ``F.dropout`` on CPU (the Atari CNN's)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class _MaskedScale(torch.autograd.Function):
    """``x * mask * scale`` with a boolean mask, one pass forward and one backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, mask: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(mask)
        ctx.scale = scale
        return torch.addcmul(x.new_zeros(()), x, mask, value=scale)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (mask,) = ctx.saved_tensors
        return torch.addcmul(grad.new_zeros(()), grad, mask, value=ctx.scale), None, None


def dropout(x: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Inverted dropout (training mode), several times faster than ``F.dropout`` on CPU.

    ``F.dropout`` draws one Bernoulli float per element, which costs far more than the
    convolutions around it on CPU. Here 16 random bits per element come from bulk
    64-bit draws, so ``p`` is rounded to a multiple of 1/65536. The mask has the
    memory format of ``x``.

    :param x: input (4-D tensors keep their memory format)
    :param p: probability of zeroing an element, in [0, 1)
    :param generator: random source (``None``: torch's global generator)
    """
    if p <= 0.0:
        return x
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device)
    bits = words.random_(-(2**63), None, generator=generator).view(torch.int16)[:n]
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        b, c, h, w = x.shape
        bits = bits.view(b, h, w, c).permute(0, 3, 1, 2)
    else:
        bits = bits.view(x.shape)
    threshold = round(p * 65536) - 32768  # int16 bits are uniform on [-32768, 32767]
    return _MaskedScale.apply(x, bits >= threshold, 1.0 / (1.0 - p))

