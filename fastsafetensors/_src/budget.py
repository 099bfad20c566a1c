"""Memory budgets of ParallelLoader (upstream 0.4's names): batches cut into units that fit.

A unit is a set of tensors of one batch of files, read together into one buffer per file and
yielded together. Units follow the files' order; within a batch they are cut greedily:

- ``max_batch_bytes``: no unit holds more than this many bytes (tensors 64-byte aligned, as read).
- ``device_memory_budget``: the bytes the load may hold at once, resident tensors included. With
  ``depth`` units alive together (read ahead plus the one consumed), a unit may hold
  ``(budget - resident) // depth`` bytes, where ``resident`` counts the units already yielded whose
  tensors the caller keeps (``resident_tensor(name)``; every tensor by default). Resident and
  non-resident tensors never share a unit: a kept tensor keeps its unit's buffer alive, so sharing
  would keep the others' bytes too.

A tensor larger than what its unit may hold makes the plan infeasible (``BudgetInfeasibleError``,
before anything is read). The plan depends only on headers, the budgets and the predicate, so
every rank given the same computes the same units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, FrozenSet, List, Optional, Sequence, Tuple

from ..errors import BudgetInfeasibleError
from .plan import align_up

__all__ = ["Unit", "Tensor", "plan_units"]

# (name, bytes, file path) of a tensor in reading order
Tensor = Tuple[str, int, str]


@dataclass(frozen=True)
class Unit:
    batch: int  # index of the batch of files it belongs to
    names: FrozenSet[str]
    nbytes: int
    resident: bool
    cap: int  # what it could hold: its allocation size under use_chunk_budget_as_allocation_size


def plan_units(batches: Sequence[Sequence[Tensor]], depth: int, *, max_batch_bytes: Optional[int] = None,
               device_memory_budget: Optional[int] = None,
               resident: Callable[[str], bool] = lambda name: True,
               checked: Callable[[str], bool] = lambda name: True) -> List[Unit]:
    """The units of ``batches`` (each its tensors in reading order). ``checked(name)``: whether the
    tensor is read here (only those can make the plan infeasible)."""
    units: List[Unit] = []
    held = 0  # bytes of resident units yielded so far

    def cap() -> float:
        room = math.inf if max_batch_bytes is None else max_batch_bytes
        if device_memory_budget is not None:
            room = min(room, max(device_memory_budget - held, 0) // depth)
        return room

    for b, tensors in enumerate(batches):
        names: List[str] = []
        size, kind = 0, None
        for name, nbytes, path in tensors:
            need, keep = align_up(nbytes), bool(resident(name))
            if names and (size + need > cap() or keep != kind):
                units.append(Unit(b, frozenset(names), size, bool(kind), int(min(cap(), 1 << 62))))
                held += size if kind else 0
                names, size = [], 0
            if need > cap() and checked(name):
                raise _infeasible(path, name, need, held, depth, max_batch_bytes, device_memory_budget)
            names.append(name)
            size, kind = size + need, keep
        if names:
            units.append(Unit(b, frozenset(names), size, bool(kind), int(min(cap(), 1 << 62))))
            held += size if kind else 0
    return units


def _infeasible(path: str, name: str, need: int, held: int, depth: int, max_batch_bytes: Optional[int],
                budget: Optional[int]) -> BudgetInfeasibleError:
    if max_batch_bytes is not None and need > max_batch_bytes:
        why = f"max_batch_bytes={max_batch_bytes}"
    else:
        why = (f"device_memory_budget={budget} with {held} bytes resident before it and {depth} units alive at "
               f"once (needs {held + depth * need})")
    return BudgetInfeasibleError(f"{path}: tensor `{name}` ({need} bytes) does not fit {why}",
                                 filename=path, tensor=name, required=held + depth * need)
