"""The fastsafetensors 0.3 API: SafeTensorsFileLoader, FilesBufferOnDevice and fastsafe_open.

Same calls and meanings as the original package, with its memory model made safe: tensors own
their memory, and ``close()`` only drops the loader's references (optional, idempotent).
"""

from __future__ import annotations

import logging
import numbers
import os
from collections import Counter
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union, cast

from . import _cpp
from ._src.direct_read import read_pieces, readable_by_me
from ._src.distributed import (ALIGN, Entry, Group, Piece, TorchGroup, build_catalog, exchange, fingerprint, group_of,
                          names_fingerprint, object_versions, push, resolve, row_piece, blocks_from_rows,
                          versions_fingerprint)
from ._src.dtypes import RAW_BYTES, float_cast
from ._src.device_engine import gds_mode, read_into_device
from ._src.engine import check_flag, check_threads, default_threads, read_into_host
from .errors import (ArgumentTypeError, InvalidArgumentError, LoaderClosedError, PeerRankError,
                     RemoteObjectChangedError, ShardRequestError, TensorNotFound, UnsupportedURLError)
from ._src.files import PathLike, SafeTensorsFile, names_urls, open_checkpoint, read_headers
from .frameworks import Framework, TensorBase, get_framework
from .metrics import LoadMetrics
from ._src.plan import LoadPlan, TensorLocation, align_up, name_list, plan_load
from .st_types import Device, DType, to_dtype

__all__ = ["SafeTensorsFileLoader", "FilesBufferOnDevice", "fastsafe_open"]

logger = logging.getLogger("fastsafetensors")

# A dtype argument: a DType, its name, or a torch / NumPy dtype (st_types.to_dtype).
DTypeLike = Any

# How the bytes of a multi-rank request reach each rank (docs/torch.md, "Two ways the bytes reach a rank").
SCATTER = "scatter"  # each rank reads its files; owners broadcast whole tensors and scatter blocks
OWN_READS = "direct"  # each rank reads what it returns straight from the files; no data crosses the group
HYBRID = "hybrid"  # blocks of split tensors read directly; whole tensors read by their owner and broadcast


def check_device(device: Device, nogds: bool, framework: Framework) -> None:
    """A CUDA target needs CUDA; where GDS was asked for, the failure is the RuntimeError naming gds
    that inference servers catch to retry with ``nogds=True``."""
    if device.is_cpu:
        return
    why = framework.gpu_unavailable()
    if why:
        reason = f"device {device} was requested but {why}"
        if not nogds:
            raise RuntimeError(f"gds: GPU Direct Storage cannot be set up: {reason}")
        raise RuntimeError(reason)


class FilesBufferOnDevice:
    """Tensors of the files a loader copied: whole, sharded over the process group, or pushed.

    Every rank must make the same calls in the same order (they are collective in the scatter
    mode). Requests are checked on the headers every rank holds before any collective starts, so a
    bad request raises on every rank. In a group of several ranks, once every tensor of a file has
    been handed out the file's buffer is released, and asking for one of its tensors again raises
    ``LoaderClosedError`` (on every rank).
    """

    def __init__(self, catalog: Dict[str, Entry], plan: LoadPlan, buffers: List["_cpp.HostBuffer"],
                 framework: Framework, device: Device, group: Group, dtype: DTypeLike = DType.AUTO, *,
                 mode: str = SCATTER, threads: Optional[int] = None, metrics: Optional[LoadMetrics] = None,
                 filtered: bool = False):
        self._catalog: Optional[Dict[str, Entry]] = catalog
        self._plan = plan
        self._buffers: List[Optional["_cpp.HostBuffer"]] = list(buffers)
        self._framework = framework
        self._device = device
        self._dtype = to_dtype(dtype)
        self._group = group
        self._mode = mode
        self._filtered = filtered  # the catalog holds only what a tensor filter kept
        self._threads = threads
        self.metrics = metrics if metrics is not None else LoadMetrics()
        self.pg = group.pg
        # name -> (rank that read it, index of its file in that rank's list), as in the 0.3 API.
        self.key_to_rank_lidx: Dict[str, Tuple[int, int]] = {n: (e.owner, e.lidx) for n, e in catalog.items()}
        # tensors of each file handed out here (with a tensor filter, fewer than the file holds)
        self._per_file = Counter(e.file.path for e in catalog.values())
        self._taken: Dict[str, set] = {}
        self._released: set = set()

    # -- checks every rank makes alike, before any collective --
    def _live(self) -> Dict[str, Entry]:
        if self._catalog is None:
            raise LoaderClosedError("this FilesBufferOnDevice was closed; tensors taken before close() stay valid")
        return self._catalog

    def _resolve(self, requests: List[Tuple[str, int]]) -> List[Tuple[List[Piece], Piece]]:
        try:
            resolved = resolve(self._live(), requests, self._group.size, self._group.rank)
        except TensorNotFound as exc:
            if not self._filtered:
                raise
            raise TensorNotFound(f"{exc}, or was filtered out by the tensor filter", tensor=exc.tensor) from None
        for _, piece in resolved:
            if piece.entry.file.path in self._released:
                raise LoaderClosedError(f"{piece.entry.file.path}: tensor `{piece.entry.name}` was requested again "
                                        "after every tensor of its file had been handed out and its buffer released")
        return resolved

    def _mark_taken(self, resolved: List[Tuple[List[Piece], Piece]]) -> None:
        if not self._group.distributed:
            return  # one process: tensors are views of buffers they keep alive; nothing to release
        for _, piece in resolved:
            f = piece.entry.file
            taken = self._taken.setdefault(f.path, set())
            taken.add(piece.entry.name)
            if len(taken) == self._per_file[f.path]:
                self._released.add(f.path)
                self._release_local(f.path)

    def _release_local(self, path: str) -> None:
        for loc in self._plan.tensors.values():
            if self._plan.files[loc.file].path == path:
                self._buffers[loc.buffer] = None

    # -- where the bytes come from --
    def _local_bytes(self, entry: Entry) -> Any:
        """The owner's bytes of a tensor it read in ``copy_files_to_device`` (a torch uint8 view, no copy)."""
        import torch

        loc = self._plan.tensors[entry.name]
        shape = Piece(entry, -1, 0, 0).byte_shape
        return torch.from_dlpack(self._buffer(loc).view(loc.offset, list(shape), *RAW_BYTES))

    def _local_tensor(self, name: str) -> Any:
        loc = self._plan.tensors[name]
        return self._framework.from_buffer(self._buffer(loc), loc.offset, loc.dtype, loc.shape)

    def _buffer(self, loc: TensorLocation) -> "_cpp.HostBuffer":
        buffer = self._buffers[loc.buffer]
        if buffer is None:  # _resolve refuses a released file's tensors first; this names the file all the same
            path = self._plan.files[loc.file].path
            raise LoaderClosedError(f"{path}: tensor `{loc.name}` was requested after its file's buffer was released")
        return buffer

    def _bytes_group(self) -> TorchGroup:
        # make_buffer gives the scatter and hybrid modes, the ones that move tensor bytes, only to a
        # group whose moves_bytes is set, and TorchGroup is the one Group that sets it.
        return cast(TorchGroup, self._group)

    def _check_viewable(self, resolved: List[Tuple[List[Piece], Piece]]) -> None:
        """A dtype torch has no type for fails here, on every rank, before any collective."""
        for _, p in resolved:
            self._framework.view_type(p.entry.dtype, p.shape)

    def _fetch(self, resolved: List[Tuple[List[Piece], Piece]]) -> Dict[str, Any]:
        group = self._group
        if not group.distributed:
            return {p.entry.name: self._local_tensor(p.entry.name) for _, p in resolved}
        if self._mode == OWN_READS:
            out = {p.entry.name: self._local_tensor(p.entry.name) for _, p in resolved
                   if p.dim < 0 and p.entry.name in self._plan.tensors}
            out.update(self._read_own([p for _, p in resolved if p.entry.name not in out]))
            return out
        if self._mode == SCATTER:
            return self._exchange(resolved)
        whole = [p for _, p in resolved if p.dim < 0]  # HYBRID: whole tensors from their owner, blocks read here
        out = self._owners_read_and_broadcast(whole) if whole else {}
        blocks = [item for item in resolved if item[1].dim >= 0]
        if blocks and blocks[0][1].entry.file.remote is not None:
            out.update(self._get_object_blocks(blocks))
        else:
            out.update(self._read_own([p for _, p in blocks]))
        return out

    def _get_object_blocks(self, items: List[Tuple[List[Piece], Piece]]) -> Dict[str, Any]:
        """The hybrid mode's blocks of objects. A block along dim 0 is one range: this rank GETs it.
        A block along an inner dim is one run per row, many small GETs or, merged, most of the
        tensor: instead each rank GETs its block of rows and the ranks swap their parts (one
        all-to-all per tensor), so each receives about 1/N of the tensor over the network. The
        ranks first agree that every GET succeeded (GETs fail far more often than local reads), so
        a failure raises on every rank instead of leaving the others waiting in a collective."""
        import torch

        group = self._group
        own = [p for _, p in items if p.dim == 0]
        inner = [item for item in items if item[1].dim > 0]
        self._check_viewable(inner)
        rows = [row_piece(p.entry, group.size, group.rank) for _, p in inner]
        error: Optional[BaseException] = None
        try:
            # Two buffers: the blocks returned keep theirs alive; the rows' is dropped once swapped.
            buffer, offsets = read_pieces(own, threads=self._threads, metrics=self.metrics)
            row_buffer, row_offsets = read_pieces(rows, threads=self._threads, metrics=self.metrics)
        except Exception as exc:  # re-raised by agree(), after every rank has heard of it
            error = exc
        group.agree(error, "getting this rank's blocks of the objects")
        out = {p.entry.name: self._framework.from_buffer(buffer, off, p.entry.dtype, p.shape)
               for p, off in zip(own, offsets)}
        local = {r.entry.name: torch.from_dlpack(row_buffer.view(off, list(r.byte_shape), *RAW_BYTES))
                 for r, off in zip(rows, row_offsets)}
        raw = blocks_from_rows(self._bytes_group(), inner, local)
        out.update({p.entry.name: self._framework.from_bytes(raw[p.entry.name], p.entry.dtype, p.shape)
                    for _, p in inner})
        return out

    def _owners_read_and_broadcast(self, pieces: List[Piece]) -> Dict[str, Any]:
        """Each owner reads its whole tensors straight from the files and broadcasts them, one packed
        buffer per owner. The buffer's first 64 bytes carry the owner's status, so a failed read
        raises on every rank without another collective."""
        self._check_viewable([([p], p) for p in pieces])
        group, out, pending = self._bytes_group(), {}, []
        error: Optional[BaseException] = None
        for owner in range(group.size):
            mine = [p for p in pieces if p.entry.owner == owner]
            if not mine:
                continue
            offsets, total = [], ALIGN
            for p in mine:
                offsets.append(total)
                total += align_up(p.nbytes, ALIGN)
            if group.rank == owner:
                buf, error = self._read_for_broadcast(mine, total)
            else:
                buf = group.empty(total)
            pending.append((owner, buf, group.broadcast(buf, owner)))
            for p, off in zip(mine, offsets):
                out[p.entry.name] = self._framework.from_bytes(buf[off:off + p.nbytes], p.entry.dtype, p.shape)
        failed = []
        for owner, buf, work in pending:
            work.wait()
            if int(buf[0]):
                failed.append(owner)
        if error is not None:
            raise error
        if failed:
            raise PeerRankError(f"reading tensors to broadcast failed on rank(s) {failed}; see their logs")
        return out

    def _read_for_broadcast(self, pieces: List[Piece], total: int) -> Tuple[Any, Optional[BaseException]]:
        """The owner's broadcast buffer: status byte, then the pieces at 64-byte aligned offsets."""
        import torch

        error: Optional[BaseException] = None
        try:
            buffer, _ = read_pieces(pieces, threads=self._threads, metrics=self.metrics, base=ALIGN)
            buf = torch.from_dlpack(buffer.view(0, [total], *RAW_BYTES))
            buf[0] = 0
        except Exception as exc:  # raised after the collectives, which every rank completes
            buf, error = torch.zeros(total, dtype=torch.uint8), exc
            buf[0] = 1
        return (buf if self._group.comm_device == "cpu" else buf.to(self._group.comm_device)), error

    def _exchange(self, resolved: List[Tuple[List[Piece], Piece]]) -> Dict[str, Any]:
        self._check_viewable(resolved)
        raw = exchange(self._bytes_group(), resolved, self._local_bytes)
        return {p.entry.name: self._framework.from_bytes(raw[p.entry.name], p.entry.dtype, p.shape)
                for _, p in resolved}

    def _read_own(self, pieces: List[Piece]) -> Dict[str, Any]:
        """This rank reads the pieces itself, straight from the files (no collective)."""
        if not pieces:
            return {}
        buffer, offsets = read_pieces(pieces, threads=self._threads, metrics=self.metrics)
        return {p.entry.name: self._framework.from_buffer(buffer, off, p.entry.dtype, p.shape)
                for p, off in zip(pieces, offsets)}

    def _finish(self, t: Any, entry: Entry, device: Any, dtype: DType) -> TensorBase:
        """The tensor as handed out: floating tensors cast to ``dtype`` (or to the buffer's), on ``device``."""
        cast = self._dtype if dtype is DType.AUTO else dtype
        target = float_cast(entry.dtype, None if cast is DType.AUTO else cast)
        kind = DType(entry.dtype)
        if target is not None and target is not kind:
            t, kind = self._framework.convert(t, target.value), target
        where = Device.from_str(device) if device is not None else self._device
        return TensorBase(self._framework.to_device(t, where), where, kind)

    def _get(self, requests: List[Tuple[str, int]], device: Any, dtype: DTypeLike) -> Dict[str, TensorBase]:
        dtype = to_dtype(dtype)  # an unknown dtype fails here, on every rank
        resolved = self._resolve(requests)
        got = self._fetch(resolved)
        self._mark_taken(resolved)
        return {p.entry.name: self._finish(got[p.entry.name], p.entry, device, dtype) for _, p in resolved}

    # -- the 0.3 API: plain tensors from get_tensor, get_sharded and push_tensor; TensorBase from
    # get_multi_cols, as_dict and the *_wrapped getters (as the upstream package returns them) --
    def get_tensor_wrapped(self, tensor_name: str, device: Any = None, dtype: DTypeLike = DType.AUTO) -> TensorBase:
        """The whole tensor on every rank (broadcast from the rank that read it, or read directly)."""
        return self._get([(tensor_name, -1)], device, dtype)[tensor_name]

    def get_tensor(self, tensor_name: str, device: Any = None, dtype: DTypeLike = DType.AUTO) -> Any:
        return self.get_tensor_wrapped(tensor_name, device, dtype).get_raw()

    def get_sharded_wrapped(self, tensor_name: str, dim: int, device: Any = None,
                            dtype: DTypeLike = DType.AUTO) -> TensorBase:
        """Block ``rank`` of the tensor split along ``dim`` over the group (``dim=-1``: the whole tensor).

        Blocks follow ``distributed.split_bounds``: 5 rows on 4 ranks are 2,1,1,1.
        """
        return self._get([(tensor_name, dim)], device, dtype)[tensor_name]

    def get_sharded(self, tensor_name: str, dim: int, device: Any = None, dtype: DTypeLike = DType.AUTO) -> Any:
        return self.get_sharded_wrapped(tensor_name, dim, device, dtype).get_raw()

    def as_dict(self, tensor_shard_dim: Mapping[str, int]) -> Dict[str, TensorBase]:
        """``get_sharded_wrapped`` of many tensors at once (collectives packed many tensors per call)."""
        return self._get(list(tensor_shard_dim.items()), None, DType.AUTO)

    def get_multi_cols(self, tensor_names: List[str], dim: int, device: Any = None,
                       dtype: DTypeLike = DType.AUTO) -> TensorBase:
        """This rank's blocks of each tensor along ``dim``, concatenated along ``dim`` (fused QKV)."""
        names = name_list(tensor_names)
        catalog = self._live()
        self._resolve([(n, dim) for n in names])
        if not names or dim < 0:
            raise ShardRequestError(f"get_multi_cols needs tensor names and a dim >= 0, got {names!r}, dim={dim}")
        first = catalog[names[0]]
        for n in names[1:]:
            e = catalog[n]
            other = [d for i, d in enumerate(e.shape) if i != dim]
            if e.dtype != first.dtype or other != [d for i, d in enumerate(first.shape) if i != dim]:
                raise ShardRequestError(f"{e.file.path}: tensor `{n}` ({e.dtype}, {list(e.shape)}) cannot be joined "
                                        f"along dim {dim} with `{first.name}` ({first.dtype}, {list(first.shape)})",
                                        filename=e.file.path, tensor=n)
        parts = self._get([(n, dim) for n in dict.fromkeys(names)], device, dtype)
        joined = self._framework.concat([parts[n].get_raw() for n in names], dim)
        return TensorBase(joined, parts[names[0]].device, parts[names[0]].dtype)

    def push_tensor(self, tensor_name: str, dst_rank: int, device: Any = None,
                    dtype: DTypeLike = DType.AUTO) -> Optional[Any]:
        """The whole tensor on rank ``dst_rank`` (sent by the rank that read it); None on the others."""
        group = self._group
        if isinstance(dst_rank, bool) or not isinstance(dst_rank, int) or not 0 <= dst_rank < group.size:
            raise ShardRequestError(f"push_tensor of `{tensor_name}`: dst_rank {dst_rank!r} is not a rank of this "
                                    f"group of {group.size}", tensor=tensor_name)
        dtype = to_dtype(dtype)
        resolved = self._resolve([(tensor_name, -1)])
        piece = resolved[0][1]
        if not group.distributed:
            t = self._fetch(resolved)[tensor_name]
        elif self._mode != SCATTER:  # only the destination takes part: it reads the tensor itself
            t = self._read_own([piece])[tensor_name] if group.rank == dst_rank else None
        else:
            self._check_viewable(resolved)
            raw = push(self._bytes_group(), piece.entry, dst_rank, self._local_bytes)
            t = None if raw is None else self._framework.from_bytes(raw, piece.entry.dtype, piece.shape)
        self._mark_taken(resolved)
        return None if t is None else self._finish(t, piece.entry, device, dtype).get_raw()

    def get_filename(self, tensor_name: str) -> str:
        return self._resolve([(tensor_name, -1)])[0][1].entry.file.path

    def get_shape(self, tensor_name: str) -> List[int]:
        return list(self._resolve([(tensor_name, -1)])[0][1].entry.shape)

    def get_keys(self) -> List[str]:
        return list(self._live())

    def close(self) -> None:
        """Drops this object's references; tensors already handed out stay valid. Safe to repeat."""
        self._catalog = None
        self._buffers = []

    def __enter__(self) -> "FilesBufferOnDevice":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# Keywords of the upstream API that this loader accepts and does not need, with the reason (docs/torch.md,
# "Accepted and ignored"); any other unknown keyword is a TypeError, so a typo never passes unnoticed.
IGNORED_KEYWORDS = {
    "max_pinned_memory_in_kb": "fastsafetensors 0.1's GDS pinned-memory pool: this loader keeps no such pool",
}


def _check_keywords(kwargs: Dict[str, Any]) -> None:
    unknown = sorted(k for k in kwargs if k not in IGNORED_KEYWORDS)
    if unknown:
        raise ArgumentTypeError(f"SafeTensorsFileLoader() got unexpected keyword argument(s): {', '.join(unknown)}")
    for k, v in kwargs.items():
        logger.debug("SafeTensorsFileLoader: %s=%r accepted and ignored (%s)", k, v, IGNORED_KEYWORDS[k])


class SafeTensorsFileLoader:
    """Loads the files each rank is given into tensors (the 0.3 entry point).

    ``pg`` is None / ``SingleGroup()`` for one process, a torch.distributed ProcessGroup, or a
    paddle.distributed Group (direct reads only: every rank must be able to open every file).
    ``max_threads`` sets the reader threads; ``bbuf_size_kb``, ``nogds`` and ``set_numa`` (run the
    reader's threads on the GPU's NUMA node) matter for GPU loads read by one process.
    Keyword ``direct_read`` (see docs/torch.md): True makes every rank read what it returns
    straight from the files (all ranks must be able to open all files); False makes each rank read
    its files and scatter/broadcast their tensors; None (default), where every rank can open every
    file, reads blocks of split tensors directly and broadcasts whole tensors from the rank that
    read them, else it behaves as False.
    ``set_tensor_filter(keep)`` narrows the loader to the tensors whose name ``keep`` accepts.
    File names may be URLs (``s3://``, ...; docs/remote.md), read in the same modes by ranged GETs
    (every rank reaches every object): by default each rank GETs its own blocks of split tensors;
    ``storage_options=`` (keyword) configures the store, else obstore reads credentials and
    endpoint from the environment.
    """

    def __init__(self, pg: Any = None, device: Union[str, Device] = "cpu", bbuf_size_kb: int = 16 * 1024,
                 max_threads: int = 16, nogds: bool = False, set_numa: bool = True, disable_cache: bool = True,
                 debug_log: bool = False, framework: Union[str, Framework] = "pytorch", **kwargs: Any):
        # disable_cache is accepted and ignored: tensors own their memory and nothing is cached (docs/torch.md).
        # The switches must be booleans: nogds="False" or debug_log="no" would turn them on.
        nogds, set_numa, debug_log = (check_flag(v, n) for n, v in
                                      (("nogds", nogds), ("set_numa", set_numa), ("debug_log", debug_log)))
        self.device = Device.from_str(device)
        self.framework = get_framework(framework)
        check_device(self.device, nogds, self.framework)
        self.group = group_of(pg, self.device)
        self.pg = self.group.pg
        self.direct_read = check_flag(kwargs.pop("direct_read", None), "direct_read", optional=True)
        self.storage_options: Optional[Mapping[str, Any]] = kwargs.pop("storage_options", None)
        _check_keywords(kwargs)
        self.bbuf_size_kb = bbuf_size_kb
        # an upper bound, as in 0.3: more reader threads than the machine runs at once only contend
        self.max_threads = min(check_threads(max_threads, "max_threads") or default_threads(), default_threads())
        self.nogds = nogds
        self.set_numa = set_numa  # GPU loads: run the reader's threads on the GPU's NUMA node
        self.debug_log = debug_log
        self.metrics = LoadMetrics()
        self._files: Dict[int, List[SafeTensorsFile]] = {}
        self._catalog: Dict[str, Entry] = {}
        self._tensor_filter: Optional[Callable[[str], bool]] = None
        self._closed = False
        if debug_log:
            logger.setLevel(logging.DEBUG)

    def _check_open(self) -> None:
        if self._closed:
            raise LoaderClosedError("this SafeTensorsFileLoader was closed")

    def add_filenames(self, filenames: Mapping[int, Iterable[PathLike]]) -> None:
        """Registers ``{rank: [files]}``; every rank reads and validates every header here."""
        self._check_open()
        for r in filenames:
            if isinstance(r, bool) or not isinstance(r, numbers.Integral):
                raise ArgumentTypeError(f"add_filenames: ranks are ints, not {type(r).__name__} ({r!r})")
        bad = [r for r in filenames if not 0 <= r < self.group.size]
        if bad:
            raise ShardRequestError(f"add_filenames: rank(s) {bad} are not in this group of {self.group.size}")
        headers: Dict[int, List[SafeTensorsFile]] = {}
        for rank, paths in filenames.items():
            paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)  # a path is one file
            headers[int(rank)] = self._read_headers(paths)
        self._add_headers(headers)

    def _add_headers(self, headers: Mapping[int, Sequence[SafeTensorsFile]]) -> None:
        """Registers ``{rank: [headers]}`` already read (ParallelLoader reads each file's once, and
        its batches reuse them: a URL's stay pinned to the ETag first seen)."""
        self._check_open()
        files = {int(r): list(fs) for r, fs in self._files.items()}
        for rank, fs in headers.items():
            files.setdefault(int(rank), []).extend(fs)
        self._catalog = build_catalog(files)
        self._files = files

    def _read_headers(self, paths: List[PathLike]) -> List[SafeTensorsFile]:
        """Headers of local files, or of the objects URLs name (one URL may be a prefix or an index)."""
        if paths and names_urls(paths):
            return open_checkpoint(paths, storage_options=self.storage_options, metrics=self.metrics)
        if self.storage_options is not None:
            raise InvalidArgumentError("storage_options= configures object stores; these files are local")
        return read_headers(paths)

    def _has_urls(self) -> bool:
        return any(f.remote is not None for fs in self._files.values() for f in fs)

    def _all_files(self) -> List[SafeTensorsFile]:
        self._check_open()
        return [f for rank in sorted(self._files) for f in self._files[rank]]

    def set_tensor_filter(self, keep_tensor: Optional[Callable[[str], bool]]) -> None:
        """Load only the tensors for which ``keep_tensor(name)`` is true (None: every tensor).

        Filtered tensors are not read, and ``get_keys``, ``key_to_rank_lidx`` and every getter act
        as if they were not in the files (``TensorNotFound``). Ranks of a group may keep different
        tensors: then each rank reads its own straight from the files (every rank must be able to
        open every file) and the getters involve no collective.
        """
        self._tensor_filter = keep_tensor

    def kept_catalog(self) -> Dict[str, Entry]:
        """The added tensors that pass the tensor filter (every one without a filter)."""
        self._check_open()
        keep = self._tensor_filter
        return self._catalog if keep is None else {n: e for n, e in self._catalog.items() if keep(n)}

    def get_keys(self) -> List[str]:
        return list(self.kept_catalog())

    def get_shape(self, tensor_name: str) -> List[int]:
        entry = self.kept_catalog().get(tensor_name)
        if entry is None:
            why = "filtered out by the tensor filter" if tensor_name in self._catalog else "in none of the added files"
            raise TensorNotFound(f"tensor `{tensor_name}` is {why}", tensor=tensor_name)
        return list(entry.shape)

    def decide_mode(self, catalog: Optional[Dict[str, Entry]] = None) -> str:
        """Agrees with every rank on the files, the tensors kept and the read mode (one small collective)."""
        kept = 0 if catalog is None or self._tensor_filter is None else names_fingerprint(catalog)
        readable = readable_by_me(self._files) if self.group.distributed and self.direct_read is not False else False
        rows = self.group.agree(None, "add_filenames", [fingerprint(self._files), int(readable), kept,
                                                        versions_fingerprint(self._files)])
        if len({row[0] for row in rows}) > 1:
            raise ShardRequestError("add_filenames was given different {rank: files} maps on different ranks")
        if len({row[3] for row in rows}) > 1:
            self._raise_changed_objects()
        everyone = all(row[1] for row in rows)
        if self.direct_read and self.group.distributed and not everyone:  # one process reads its files anyway
            raise ShardRequestError("direct_read=True, but some rank cannot open every file; use direct_read=False")
        if len({row[2] for row in rows}) > 1:
            # Different tensors on different ranks: no collective can serve them, each rank reads its own.
            if not everyone:
                raise ShardRequestError("the tensor filter keeps different tensors on different ranks, so each rank "
                                        "must read its own from the files, but some rank cannot open every file "
                                        "(or direct_read=False was given)")
            return OWN_READS
        if not self.group.distributed or not everyone:
            return SCATTER
        if self.direct_read or not self.framework.group_shareable or not self.group.moves_bytes:
            return OWN_READS
        return HYBRID

    def _raise_changed_objects(self) -> None:
        """Names the objects whose versions differ between ranks (every rank gets here, after the same
        file maps were agreed on, so each sends one digest per object, in the same order)."""
        versions = object_versions(self._files)
        rows = self.group.agree(None, "comparing object versions", list(versions.values()))
        changed = [url for i, url in enumerate(versions) if len({row[i] for row in rows}) > 1]
        # Each rank GETs from the version it read the header of: they must all have read the same one.
        raise RemoteObjectChangedError(f"the ranks read the headers of different versions (ETags) of "
                                       f"{', '.join(changed)}: replaced while the ranks added them; add them again",
                                       filename=changed[0])

    def read_local(self, mode: str, catalog: Dict[str, Entry], everything: bool = False,
                   max_copy_block_size: int = 16 * 1024 ** 3,
                   min_buffer_bytes: int = 0) -> Tuple[LoadPlan, List["_cpp.HostBuffer"]]:
        """Reads the tensors of ``catalog`` this rank holds up front: those of its own files (scatter),
        none (direct, hybrid), or those of every file (``everything``, for loading whole files on
        every rank); each buffer at least ``min_buffer_bytes``. No collective."""
        if everything or not self.group.distributed:
            files = self._all_files()
        else:
            files = self._files.get(self.group.rank, []) if mode == SCATTER else []
        if self._tensor_filter is None:
            plan = plan_load(files)
        else:
            paths = {f.path for f in files}
            plan = plan_load(files, [n for n, e in catalog.items() if e.file.path in paths])
        plan.buffer_sizes = [max(n, min_buffer_bytes) for n in plan.buffer_sizes]
        if self.device.is_cpu or self.group.distributed or self.framework.gpu_via_host:
            # Process groups share tensors from host buffers; to_device moves each result.
            buffers = read_into_host(plan, threads=self.max_threads, metrics=self.metrics,
                                     chunk_bytes=max(1 << 20, min(max_copy_block_size, 8 << 20)))
        elif self._has_urls() and not self.nogds:
            raise UnsupportedURLError(f"{files[0].path}: GPU Direct Storage reads local files only; pass nogds=True "
                                      "to read URLs into host memory and copy them to the device")
        elif self._has_urls():
            buffers = read_into_host(plan, threads=self.max_threads, metrics=self.metrics)
        else:
            # bbuf_size_kb bounds the pinned staging memory, as it did in the 0.3 package.
            buffers = read_into_device(plan, self.framework, self.device, threads=self.max_threads,
                                       staging_bytes=self.bbuf_size_kb * 1024, metrics=self.metrics,
                                       gds=gds_mode(self.nogds), numa=self.set_numa)
        return plan, buffers

    def make_buffer(self, plan: LoadPlan, buffers: List["_cpp.HostBuffer"], mode: str, catalog: Dict[str, Entry],
                    dtype: DTypeLike = DType.AUTO) -> FilesBufferOnDevice:
        if self.group.distributed and mode != OWN_READS and not self.group.moves_bytes:
            raise ShardRequestError(f"a {type(self.pg).__module__}.{type(self.pg).__name__} process group carries no "
                                    "tensor bytes here, so every rank must be able to open every file "
                                    "(and direct_read must not be False)")
        if self.group.distributed and mode != OWN_READS and not self.framework.group_shareable:
            raise InvalidArgumentError("sharing tensors over a process group needs framework='pytorch' (or direct_read=True)")
        return FilesBufferOnDevice(catalog, plan, buffers, self.framework, self.device, self.group, dtype,
                                   mode=mode, threads=self.max_threads, metrics=self.metrics,
                                   filtered=self._tensor_filter is not None)

    def copy_files_to_device(self, dtype: DTypeLike = DType.AUTO, use_buf_register: bool = True,
                             max_copy_block_size: int = 16 * 1024 ** 3) -> FilesBufferOnDevice:
        """Reads this rank's files (or, in direct mode, nothing yet) and returns their tensors.

        A read error on one rank raises on every rank (a PeerRankError on the others).
        """
        dtype = to_dtype(dtype)  # a bad dtype raises here, not at the first getter
        catalog = self.kept_catalog()
        mode = self.decide_mode(catalog)
        error: Optional[BaseException] = None
        try:
            plan, buffers = self.read_local(mode, catalog, max_copy_block_size=max_copy_block_size)
        except Exception as exc:  # re-raised by agree(), after every rank has heard of it
            error = exc
        self.group.agree(error, "copy_files_to_device")
        return self.make_buffer(plan, buffers, mode, catalog, dtype)

    def reset(self) -> None:
        """Forgets the added files; the loader can be used again."""
        self._files = {}
        self._catalog = {}

    def close(self) -> None:
        """Releases the loader; optional and safe to call twice."""
        self.reset()
        self._closed = True

    def __enter__(self) -> "SafeTensorsFileLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class fastsafe_open:  # noqa: N801 - the 0.3 API's name
    """Context manager over a list of files: ``keys()``/``get_keys()``, ``metadata()``, ``get_tensor()``."""

    def __init__(self, filenames: Union[PathLike, Iterable[PathLike], Mapping[int, Iterable[PathLike]]],
                 framework: str = "pt", pg: Any = None,
                 device: str = "cpu", nogds: bool = False, debug_log: bool = False,
                 max_copy_block_size: int = 16 * 1024 ** 3, storage_options: Optional[Mapping[str, Any]] = None):
        # A file or a list: rank 0 reads them (the others receive); a {rank: files} map as given.
        if isinstance(filenames, Mapping):
            by_rank = dict(filenames)
        elif isinstance(filenames, (str, bytes)) or hasattr(filenames, "__fspath__"):
            by_rank = {0: [filenames]}
        else:
            by_rank = {0: list(filenames)}
        self._loader = SafeTensorsFileLoader(pg, device, nogds=nogds, debug_log=debug_log, framework=framework,
                                             storage_options=storage_options)
        self._loader.add_filenames(by_rank)
        self._max_copy_block_size = max_copy_block_size
        self._buffer: Optional[FilesBufferOnDevice] = None

    def _fb(self) -> FilesBufferOnDevice:
        if self._buffer is None:
            self._buffer = self._loader.copy_files_to_device(max_copy_block_size=self._max_copy_block_size)
        return self._buffer

    def keys(self) -> List[str]:
        return self._loader.get_keys()

    get_keys = keys

    def metadata(self) -> Dict[str, Optional[Dict[str, str]]]:
        """``{filename: that file's __metadata__ (None if it has none)}``, as upstream returns it."""
        return {f.path: f.metadata for f in self._loader._all_files()}

    def get_tensor_wrapped(self, name: str) -> TensorBase:
        return self._fb().get_tensor_wrapped(name)

    def get_tensor(self, name: str) -> Any:
        return self._fb().get_tensor(name)

    def close(self) -> None:
        if self._buffer is not None:
            self._buffer.close()
        self._loader.close()

    def __enter__(self) -> "fastsafe_open":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
