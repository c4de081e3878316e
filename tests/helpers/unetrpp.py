"""Helpers for the UNETR++ tests: the parity fixtures' deterministic fill rule (docs/unetr_pp.md, section 11)."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import torch


def load_fixture(shared_dir: Path, config: str) -> dict:
    return json.loads((shared_dir / "parity" / f"unetrpp_{config}.json").read_text())


def fill_value(key: str, shape: list[int]) -> torch.Tensor:
    """The fixture's value for parameter ``key``: seeded by crc32 of the official key name."""
    g = torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8")))
    u = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    if len(shape) >= 2:
        value = u / math.sqrt(math.prod(shape[1:]))
    elif key.endswith("weight"):
        value = 1 + 0.1 * u
    else:
        value = 0.1 * u
    return value.to(torch.float32)


def fill_by_rule(net: torch.nn.Module, manifest: dict) -> None:
    """Overwrite every parameter of ``net`` by the fill rule, in the manifest's order (tied keys keep the first)."""
    state = net.state_dict(keep_vars=True)
    with torch.no_grad():
        for entry in manifest["state_dict"]:
            if not entry["parameter"] or "tied_to" in entry:
                continue
            state[entry["key"]].copy_(fill_value(entry["key"], entry["shape"]))


def fixture_input(manifest: dict) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(manifest["input_shape"], generator=g, dtype=torch.float32)


def sampled_errors(outputs: list[torch.Tensor], manifest: dict) -> list[float]:
    """Max absolute error of each output at the fixture's sampled flat indices."""
    errors = []
    for out, ref in zip(outputs, manifest["outputs"]):
        assert list(out.shape) == ref["shape"], (list(out.shape), ref["shape"])
        idx = torch.tensor(ref["sample_index"], dtype=torch.long)
        got = out.reshape(-1)[idx].double()
        errors.append(float((got - torch.tensor(ref["sample_value"], dtype=torch.float64)).abs().max()))
    return errors
