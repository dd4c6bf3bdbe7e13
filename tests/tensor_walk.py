"""For tests of the engine boundary: find torch tensors wherever they hide in an object."""

import torch


def tensors_in(obj) -> list:
    """Every torch tensor reachable from ``obj`` (dicts, lists, tuples, objects' fields)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in tensors_in(v)]
    if isinstance(obj, list | tuple):
        return [t for v in obj for t in tensors_in(v)]
    if hasattr(obj, "__dict__"):
        return tensors_in(vars(obj))
    return []
