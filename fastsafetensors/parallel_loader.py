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
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Deque, Generator, List, Optional, Sequence, Tuple

from .errors import LoaderClosedError
from .files import PathLike
from .loader import DIRECT, SCATTER, SafeTensorsFileLoader
from .plan import LoadPlan

__all__ = ["ParallelLoader"]

logger = logging.getLogger("fastsafetensors")

_Batch = Tuple[SafeTensorsFileLoader, LoadPlan, list]


class ParallelLoader:
    """Yields ``(name, tensor)`` for every tensor of ``hf_weights_files``, each exactly once, on every rank.

    Extra keywords go to each batch's :class:`SafeTensorsFileLoader` (e.g. ``direct_read``).
    """

    def __init__(self, pg: Any, hf_weights_files: Sequence[PathLike], max_concurrent_producers: int = 1,
                 queue_size: int = 0, use_tqdm_on_load: bool = True, device: str = "cpu",
                 bbuf_size_kb: int = 16 * 1024, max_threads: int = 16, nogds: bool = False, set_numa: bool = True,
                 debug_log: bool = False, framework: str = "pytorch", **kwargs: Any):
        self._options = dict(device=device, bbuf_size_kb=bbuf_size_kb, max_threads=max_threads, nogds=nogds,
                             set_numa=set_numa, debug_log=debug_log, framework=framework, **kwargs)
        if max_concurrent_producers < 1:
            raise ValueError(f"max_concurrent_producers must be at least 1, got {max_concurrent_producers}")
        if queue_size < -1:
            raise ValueError(f"queue_size must be -1 (serial), 0 or more, got {queue_size}")
        probe = self._loader(pg)  # checks the device and the group once, before any thread starts
        self.pg = probe.pg
        self._group = probe.group
        world = self._group.size
        files = list(hf_weights_files)
        self._batches: List[List[PathLike]] = [files[i:i + world] for i in range(0, len(files), world)]
        # Every header once (a broken or duplicated tensor fails here, on every rank), then one
        # collective in the caller's thread: the same file list everywhere, and the read mode.
        probe.add_filenames({r: files[r::world] for r in range(world)})
        # Every tensor is wanted whole on every rank: unless direct reads are asked for, each file is
        # read once (by its rank, in a producer) and broadcast, rather than read by every rank.
        self._mode = DIRECT if probe.decide_mode() == DIRECT and probe.direct_read else SCATTER
        probe.close()
        self._ahead = 0 if queue_size < 0 else queue_size + 1
        self._pool = ThreadPoolExecutor(max_concurrent_producers, "fastsafetensors-producer") if self._ahead else None
        self._pending: Deque[Future] = deque()
        self._show_progress = use_tqdm_on_load and self._group.rank == 0
        self._closed = False

    def _loader(self, pg: Any) -> SafeTensorsFileLoader:
        return SafeTensorsFileLoader(pg, **self._options)

    def _produce(self, batch: List[PathLike]) -> _Batch:
        """Reads one batch on this rank (no collective): its own file, or every file in direct mode."""
        loader = self._loader(self.pg)
        loader.add_filenames({r: [f] for r, f in enumerate(batch)})
        plan, buffers = loader.read_local(self._mode, everything=self._mode == DIRECT)
        return loader, plan, buffers

    def _submit(self, batch: List[PathLike]) -> Future:
        if self._pool is not None:
            return self._pool.submit(self._produce, batch)
        done: Future = Future()
        try:
            done.set_result(self._produce(batch))
        except Exception as exc:
            done.set_exception(exc)
        return done

    def iterate_weights(self) -> Generator[Tuple[str, Any], None, None]:
        """Every tensor of every file as ``(name, tensor)``; batches are freed as soon as consumed."""
        if self._closed:
            raise LoaderClosedError("this ParallelLoader was closed (or already iterated); make a new one")
        bar = self._progress_bar()
        upcoming = iter(self._batches)
        try:
            for batch in self._batches:
                while len(self._pending) < self._ahead + 1:
                    nxt = next(upcoming, None)
                    if nxt is None:
                        break
                    self._pending.append(self._submit(nxt))
                yield from self._consume(self._pending.popleft(), batch)
                if bar is not None:
                    bar.update(len(batch))
        finally:
            if bar is not None:
                bar.close()
            self.close()

    def _consume(self, produced: Future, batch: List[PathLike]) -> Generator[Tuple[str, Any], None, None]:
        error: Optional[BaseException] = None
        try:
            loader, plan, buffers = produced.result()
        except Exception as exc:  # re-raised by agree() once every rank has heard of it
            error = exc
        self._group.agree(error, f"reading {[str(f) for f in batch]}")
        fb = loader.make_buffer(plan, buffers, self._mode)
        try:
            tensors = fb.as_dict({name: -1 for name in fb.key_to_rank_lidx})
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

        return tqdm(total=sum(len(b) for b in self._batches), unit="file", desc="fastsafetensors")

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
