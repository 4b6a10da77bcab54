"""Device resolution: ``"auto" | "cpu" | "cuda" | "cuda:i"`` -> ``torch.device``.

This is the only place in the library that decides where tensors live; everything else takes a
``torch.device`` (or follows the device of its inputs).
"""

from __future__ import annotations

import re

import torch

_CUDA = re.compile(r"cuda(?::(\d+))?")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Resolve a device name, failing early with a clear message.

    ``"auto"`` picks the first CUDA GPU (``cuda:0``) when one is visible, else ``cpu``: the same device, and so the same
    config and result-store key, as asking for ``"cuda"`` by name.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', got {device!r}")
    if device == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if device == "cpu":
        return torch.device("cpu")
    match = _CUDA.fullmatch(device)
    if match is None:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', got {device!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but no CUDA GPU is available; use 'auto' or 'cpu'")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise ValueError(
            f"device {device!r} was requested but only {torch.cuda.device_count()} CUDA GPU(s) are visible"
        )
    return torch.device("cuda", index)
