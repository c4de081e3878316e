"""Shapes in error messages, written the same way by eager PyTorch and by a TorchScript model.

A ``torch.Size`` prints as ``torch.Size([1, 2])`` and a TorchScript shape (a list) as ``[1, 2]``; the networks'
messages use :func:`shape_text` for the tuple form ``(1, 2)`` in both.

Examples:
    >>> import torch
    >>> shape_text(list(torch.zeros(1, 2, 3).shape))
    '(1, 2, 3)'
"""

from __future__ import annotations

__all__ = ["shape_text"]


def shape_text(values: list[int]) -> str:
    """``[1, 2, 3] -> "(1, 2, 3)"``, as ``str(tuple(values))``; compiles with TorchScript."""
    if len(values) == 1:
        return f"({values[0]},)"
    return "(" + ", ".join([str(v) for v in values]) + ")"
