"""ParallelLoader (the 0.3 API): every tensor of many files, one batch of files at a time.

Files go in batches of one file per rank (batch k holds files k*N .. k*N+N-1, the i-th read by
rank i). Producer threads read batches ahead while the caller consumes the current one:
``queue_size=-1`` reads serially in the caller's thread, ``queue_size=q >= 0`` lets up to ``q + 1``
batches be read ahead (so at most ``q + 2`` batches live at once: ``0`` is the unbuffered
hand-off of the 0.3 package). ``max_concurrent_producers`` threads read those batches in parallel;
batches are still consumed in order on every rank.

Producers never touch the process group: the collectives (one agreement per batch that every
rank read its files, then the packed broadcasts of the scatter mode) all run in the consumer's
thread, in the same order on every rank.

``tensor_filter`` (a predicate on tensor names) makes each rank read and yield only the tensors it
keeps; ``all_local=True`` makes each rank read every file itself with no collective at all (as the
0.4 package does for expert-parallel loading).

Memory budgets (upstream 0.4's keywords, fastsafetensors/_src/budget.py): ``max_batch_bytes`` and
``device_memory_budget`` cut each batch into units read and yielded one after another, so that the
buffers alive at once fit; ``resident_tensor`` (or ``accumulate_resident``) says which yielded
tensors the caller keeps. Every rank must pass the same budgets.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import (Any, Callable, Deque, Dict, FrozenSet, Generator, Iterator, List, Optional, Sequence, Tuple, Type,
                    TypeVar, Union, cast)

from ._src.budget import Tensor, Unit, plan_units
from .common import SingleGroup
from ._src.distributed import Entry, group_of
from .errors import BudgetInfeasibleError, InvalidArgumentError, LoaderClosedError
from ._src.files import PathLike, SafeTensorsFile, open_checkpoint
from .loader import OWN_READS, SCATTER, FilesBufferOnDevice, SafeTensorsFileLoader
from ._src.plan import LoadPlan
from .st_types import DType, to_dtype

__all__ = ["ParallelLoader"]

logger = logging.getLogger("fastsafetensors")

# What a producer hands the consumer: the batch's loader, the tensors it kept, its plan and buffers,
# and the dtype asked for.
_Batch = Tuple[SafeTensorsFileLoader, Dict[str, Entry], LoadPlan, list, DType]
_ReadBatch = Callable[[DType, int], _Batch]
_Loader = TypeVar("_Loader", bound=SafeTensorsFileLoader)


class _Work:
    """One read of the pipeline: a batch of files (one per rank), or one unit of it under a budget."""

    def __init__(self, files: List[SafeTensorsFile], names: Optional[FrozenSet[str]] = None, alloc: int = 0,
                 last: bool = True):
        self.files = files  # headers read once by ParallelLoader
        self.names = names  # None: every (kept) tensor of the files
        self.alloc = alloc  # bytes to allocate per file buffer at least (use_chunk_budget_as_allocation_size)
        self.last = last  # the batch's last unit: its files are done


def _positive(name: str, value: Optional[int]) -> Optional[int]:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise InvalidArgumentError(f"{name} must be a positive number of bytes or None, got {value!r}")
    return value


class BatchLoader(SafeTensorsFileLoader):
    """``ParallelLoader.loader``: the loader every batch is read through.

    While a producer reads a batch, ``copy_files_to_device`` reads that batch on this rank (no
    collective) and hands it to the consumer, with the ``dtype`` and ``max_copy_block_size`` it was
    called with: a caller may wrap the method to pass its own (vLLM passes ``max_copy_block_size``
    so). Called outside ``iterate_weights`` it is ``SafeTensorsFileLoader.copy_files_to_device``
    on whatever files were added to it (none by default).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._producing = threading.local()

    @contextmanager
    def producing(self, read: _ReadBatch) -> Iterator[None]:
        """Within the block, ``copy_files_to_device`` in this thread calls ``read`` instead."""
        self._producing.read = read
        try:
            yield
        finally:
            self._producing.read = None

    # Unlike the base method, it returns a _Batch within producing(): the producer calls it
    # through whatever wrapper a caller put on it, and only the producer's thread sees that.
    def copy_files_to_device(  # type: ignore[override]
            self, dtype: Any = DType.AUTO, use_buf_register: bool = True,
            max_copy_block_size: int = 16 * 1024 ** 3) -> Union[FilesBufferOnDevice, _Batch]:
        read = getattr(self._producing, "read", None)
        if read is None:
            return super().copy_files_to_device(dtype, use_buf_register, max_copy_block_size)
        return read(to_dtype(dtype), max_copy_block_size)


class ParallelLoader:
    """Yields ``(name, tensor)`` for every tensor of ``hf_weights_files``, each exactly once, on every rank.

    ``hf_weights_files`` is a list of files (or object URLs), or one path or URL naming a checkpoint
    as ``fastsafetensors.load`` takes it (a directory or prefix, an index), which stands for its files.

    ``tensor_filter(name) -> bool``: only the tensors it keeps are read and yielded; it may keep
    different tensors on different ranks (then each rank reads its own from the files, which every
    rank must be able to open). ``all_local=True``: every rank reads every file itself and the
    process group is not used at all (no collective; a rank that cannot open a file raises alone).
    ``max_batch_bytes`` / ``device_memory_budget`` (bytes): see the module's docstring and
    docs/torch.md, "Memory budgets"; ``use_chunk_budget_as_allocation_size`` allocates each unit's
    buffers at the unit's budget instead of its bytes; ``resident_tensor(name)`` says which yielded
    tensors stay alive (default: every one, or none with ``accumulate_resident=False``). A budget
    that cannot hold a tensor raises ``BudgetInfeasibleError`` here, on every rank, before any read;
    one that cannot hold ``queue_size``'s read-ahead lowers it (logged).
    Extra keywords go to each batch's :class:`SafeTensorsFileLoader` (e.g. ``direct_read``).
    """

    def __init__(self, pg: Any, hf_weights_files: Union[PathLike, Sequence[PathLike]], max_concurrent_producers: int = 1,
                 queue_size: int = 0, use_tqdm_on_load: bool = True, device: str = "cpu",
                 bbuf_size_kb: int = 16 * 1024, max_threads: int = 16, nogds: bool = False, set_numa: bool = True,
                 debug_log: bool = False, framework: str = "pytorch",
                 tensor_filter: Optional[Callable[[str], bool]] = None, all_local: bool = False,
                 max_batch_bytes: Optional[int] = None, device_memory_budget: Optional[int] = None,
                 use_chunk_budget_as_allocation_size: bool = False, accumulate_resident: bool = True,
                 resident_tensor: Optional[Callable[[str], bool]] = None, **kwargs: Any):
        self._options = dict(device=device, bbuf_size_kb=bbuf_size_kb, max_threads=max_threads, nogds=nogds,
                             set_numa=set_numa, debug_log=debug_log, framework=framework, **kwargs)
        if max_concurrent_producers < 1:
            raise InvalidArgumentError(f"max_concurrent_producers must be at least 1, got {max_concurrent_producers}")
        if queue_size < -1:
            raise InvalidArgumentError(f"queue_size must be -1 (serial), 0 or more, got {queue_size}")
        self._filter = tensor_filter
        self._budgets = dict(max_batch_bytes=_positive("max_batch_bytes", max_batch_bytes),
                             device_memory_budget=_positive("device_memory_budget", device_memory_budget))
        if use_chunk_budget_as_allocation_size and max_batch_bytes is None and device_memory_budget is None:
            raise InvalidArgumentError("use_chunk_budget_as_allocation_size needs max_batch_bytes or device_memory_budget")
        if resident_tensor is not None and not accumulate_resident:
            raise InvalidArgumentError("pass resident_tensor or accumulate_resident=False, not both")
        self._resident = resident_tensor or (lambda name: accumulate_resident)
        self._alloc_at_budget = use_chunk_budget_as_allocation_size
        # all_local: this rank reads every file through a group of one, as if it were alone.
        self.loader = self._new_loader(SingleGroup() if all_local else pg, BatchLoader)
        self.pg = self.loader.pg if pg is None else pg
        self._group = self.loader.group
        world = self._group.size
        # Every header once (a broken or duplicated tensor fails here, on every rank; the batches
        # reuse them), then two small collectives in the caller's thread: whether every rank read its
        # headers (a rank that could not, e.g. a missing file or a failed LIST, must not leave the
        # others waiting in the next one), then the same file list everywhere, the tensors kept, the read mode.
        error: Optional[BaseException] = None
        files: List[SafeTensorsFile] = []
        try:
            files = self._read_headers(hf_weights_files)
        except Exception as exc:  # re-raised by agree() once every rank has heard of it
            error = exc
        self._group.agree(error, "reading the checkpoint's headers")
        batches = [files[i:i + world] for i in range(0, len(files), world)]
        self.loader._add_headers({r: files[r::world] for r in range(world)})
        mode = self.loader.decide_mode(self.loader.kept_catalog())
        # Every tensor is wanted whole on every rank: unless direct reads are asked for (or a filter
        # keeps different tensors per rank, or the group carries no bytes), each file is read once,
        # by its rank, and broadcast.
        own_reads = self.loader.direct_read or tensor_filter or not self._group.moves_bytes
        self._mode = OWN_READS if mode == OWN_READS and own_reads else SCATTER
        self._ahead = 0 if queue_size < 0 else queue_size + 1
        self._work = self._plan_work(batches)
        self.loader.reset()
        self._pool = ThreadPoolExecutor(max_concurrent_producers, "fastsafetensors-producer") if self._ahead else None
        self._pending: Deque[Future] = deque()
        self._show_progress = use_tqdm_on_load and group_of(pg).rank == 0  # this rank in pg, even with all_local
        self._closed = False

    def _read_headers(self, hf_weights_files: Union[PathLike, Sequence[PathLike]]) -> List[SafeTensorsFile]:
        """The files' headers, in order. One path or URL is a checkpoint as load() takes it (a
        file, a directory or prefix, an index): it stands for its files."""
        if isinstance(hf_weights_files, (str, os.PathLike)):
            return open_checkpoint(hf_weights_files, storage_options=self.loader.storage_options,
                                   metrics=self.loader.metrics)
        return self.loader._read_headers(list(hf_weights_files))

    def _plan_work(self, batches: List[List[SafeTensorsFile]]) -> List[_Work]:
        """The batches, cut into units where a budget is set (and ``self._ahead`` lowered to fit)."""
        if self._budgets["max_batch_bytes"] is None and self._budgets["device_memory_budget"] is None:
            return [_Work(b) for b in batches]
        error: Optional[BaseException] = None
        try:
            units = self._plan_units(len(batches))
        except BudgetInfeasibleError as exc:  # raised by agree() once every rank has heard of it
            error, units = exc, []
        self._group.agree(error, "planning the memory budget")
        last = {u.batch: i for i, u in enumerate(units)}
        return [_Work(batches[u.batch], u.names, u.cap if self._alloc_at_budget else 0, last[u.batch] == i)
                for i, u in enumerate(units)]

    def _plan_units(self, count: int) -> List[Unit]:
        """Units of every batch, for the deepest read-ahead that fits (as upstream clamps queue_size)."""
        keep = self._filter
        # Ranks that keep different tensors must still cut the same units (each unit is one
        # collective agreement): they plan over every tensor, and check only those they read.
        shared = keep is None or not self._group.distributed
        per_rank = self.loader._files
        batches: List[List[Tensor]] = []
        for k in range(count):
            files = [per_rank[r][k] for r in sorted(per_rank) if k < len(per_rank[r])]
            batches.append([(t.name, t.nbytes, f.path) for f in files for t in sorted(f.infos, key=lambda t: t.begin)
                            if not shared or keep is None or keep(t.name)])
        checked = keep or (lambda name: True)
        ahead = self._ahead
        while True:
            try:
                units = plan_units(batches, ahead + 1, resident=self._resident, checked=checked, **self._budgets)
                break
            except BudgetInfeasibleError:
                if ahead == 0:
                    raise
                ahead -= 1
        if ahead != self._ahead:
            logger.warning("ParallelLoader: reading %d batch(es) ahead instead of %d to fit device_memory_budget",
                           ahead, self._ahead)
            self._ahead = ahead
        return units

    def _new_loader(self, pg: Any, kind: Type[_Loader]) -> _Loader:
        loader = kind(pg, **self._options)
        loader.set_tensor_filter(self._filter)
        return loader

    def _produce(self, work: _Work) -> _Batch:
        """Reads one batch (or unit) on this rank (no collective) through
        ``self.loader.copy_files_to_device``: its own file, or every file in direct mode."""
        loader = self._new_loader(self._group.pg, SafeTensorsFileLoader)
        if work.names is not None:
            keep, names = self._filter, work.names
            loader.set_tensor_filter(lambda name: name in names and (keep is None or keep(name)))
        loader._add_headers({r: [f] for r, f in enumerate(work.files)})

        def read(dtype: DType, max_copy_block_size: int) -> _Batch:
            catalog = loader.kept_catalog()
            plan, buffers = loader.read_local(self._mode, catalog, everything=self._mode == OWN_READS,
                                              max_copy_block_size=max_copy_block_size, min_buffer_bytes=work.alloc)
            return loader, catalog, plan, buffers, dtype

        with self.loader.producing(read):
            # Within producing() the method returns what read returns (a caller's wrapper passes it on).
            return cast(_Batch, self.loader.copy_files_to_device())

    def _submit(self, work: _Work) -> Future:
        if self._pool is not None:
            return self._pool.submit(self._produce, work)
        done: Future = Future()
        try:
            done.set_result(self._produce(work))
        except Exception as exc:
            done.set_exception(exc)
        return done

    def iterate_weights(self) -> Generator[Tuple[str, Any], None, None]:
        """Every tensor of every file as ``(name, tensor)``; batches are freed as soon as consumed."""
        if self._closed:
            raise LoaderClosedError("this ParallelLoader was closed (or already iterated); make a new one")
        bar = self._progress_bar()
        upcoming = iter(self._work)
        try:
            for work in self._work:
                while len(self._pending) < self._ahead + 1:
                    nxt = next(upcoming, None)
                    if nxt is None:
                        break
                    self._pending.append(self._submit(nxt))
                yield from self._consume(self._pending.popleft(), work.files)
                if bar is not None and work.last:
                    bar.update(len(work.files))
        finally:
            if bar is not None:
                bar.close()
            self.close()

    def _consume(self, produced: Future, batch: List[SafeTensorsFile]) -> Generator[Tuple[str, Any], None, None]:
        error: Optional[BaseException] = None
        try:
            loader, catalog, plan, buffers, dtype = produced.result()
        except Exception as exc:  # re-raised by agree() once every rank has heard of it
            error = exc
        self._group.agree(error, f"reading {[f.path for f in batch]}")
        fb = loader.make_buffer(plan, buffers, self._mode, catalog, dtype)
        try:
            tensors = {n: t.get_raw() for n, t in fb.as_dict({name: -1 for name in fb.key_to_rank_lidx}).items()}
            fb.close()
            while tensors:
                name = next(iter(tensors))
                yield name, tensors.pop(name)
        finally:
            fb.close()
            loader.close()

    def _progress_bar(self):
        if not self._show_progress:
            return None
        from tqdm import tqdm

        return tqdm(total=sum(len(w.files) for w in self._work if w.last), unit="file", desc="fastsafetensors")

    def close(self) -> None:
        """Stops the producers and frees batches read but not consumed. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        while self._pending:
            fut = self._pending.popleft()
            if not fut.cancel():
                try:
                    fut.result()[0].close()
                except Exception as exc:  # a batch nobody will consume: its error is moot
                    logger.debug("ParallelLoader.close: dropped a failed batch: %s", exc)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self.loader.close()
