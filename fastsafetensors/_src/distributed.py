"""Tensor parallelism over a process group: which rank gets which block, and the collectives.

Split rule (``split_bounds``): a dimension of ``size`` over ``world`` ranks is cut like
``torch.tensor_split`` / ``numpy.array_split``: the first ``size % world`` ranks get one row more,
so 5 rows on 4 ranks are 2,1,1,1 and 3 rows on 4 ranks are 1,1,1,0 (an empty block is a valid
block: every rank still takes part in the collective and receives a tensor with 0 rows).

Every rank parses every header, so every request is checked on metadata all ranks share
(``resolve``) before any collective starts: a bad request raises on every rank instead of leaving
the others waiting. Collectives move raw bytes (uint8), many tensors per call.
"""

from __future__ import annotations

import hashlib
import logging
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .. import _cpp
from .dtypes import BITS, packed_shape
from ..errors import ArgumentTypeError, DuplicateTensorName, PeerRankError, ShardRequestError, TensorNotFound
from .files import SafeTensorsFile
from .plan import align_up

__all__ = ["split_bounds", "Entry", "Piece", "build_catalog", "resolve", "Group", "TorchGroup", "PaddleGroup",
           "group_of", "exchange", "push", "row_piece", "blocks_from_rows", "fingerprint", "names_fingerprint",
           "object_versions", "versions_fingerprint"]

logger = logging.getLogger("fastsafetensors")

ALIGN = 64  # byte alignment of each tensor inside a collective buffer (any dtype can be viewed there)
DEFAULT_COLLECTIVE_BYTES = 64 << 20  # per-destination bytes one packed collective call carries at most
PACK_BELOW = 1 << 20  # tensors smaller than this (per rank) share collective calls; larger ones go alone


def split_bounds(size: int, world: int) -> List[Tuple[int, int]]:
    """``[start, stop)`` of each rank's block of ``size`` rows (``torch.tensor_split`` rule)."""
    base, extra = divmod(size, world)
    bounds, start = [], 0
    for r in range(world):
        stop = start + base + (1 if r < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


@dataclass(frozen=True)
class Entry:
    """Where a tensor lives in the group: the rank that reads its file, the file, its header entry."""

    name: str
    owner: int
    lidx: int  # index of the file in the owner's list (the 0.3 API's ``key_to_rank_lidx``)
    file: SafeTensorsFile
    index: int  # position in the file's header

    @property
    def info(self) -> "_cpp.TensorInfo":
        return self.file.infos[self.index]

    @property
    def dtype(self) -> str:
        return self.info.dtype

    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(self.info.shape)


def build_catalog(files_by_rank: Mapping[int, Sequence[SafeTensorsFile]]) -> Dict[str, Entry]:
    """Every tensor of every rank's files; a name in two files is an error (on every rank)."""
    catalog: Dict[str, Entry] = {}
    for rank in sorted(files_by_rank):
        for lidx, f in enumerate(files_by_rank[rank]):
            for k, info in enumerate(f.infos):
                if info.name in catalog:
                    raise DuplicateTensorName(f"tensor `{info.name}` is in both {catalog[info.name].file.path} "
                                              f"and {f.path}", filename=f.path, tensor=info.name)
                catalog[info.name] = Entry(info.name, rank, lidx, f, k)
    return catalog


@dataclass(frozen=True)
class Piece:
    """What one rank receives of one tensor: rows ``[start, stop)`` along ``dim`` (-1: all of it)."""

    entry: Entry
    dim: int
    start: int
    stop: int

    @property
    def shape(self) -> Tuple[int, ...]:
        shape = list(self.entry.shape)
        if self.dim >= 0:
            shape[self.dim] = self.stop - self.start
        return tuple(shape)

    @property
    def box(self) -> Tuple[List[int], List[int]]:
        """Element box ``(start, stop)`` of this piece within the tensor (for ``_cpp.plan_box``)."""
        start = [0] * len(self.entry.shape)
        stop = list(self.entry.shape)
        if self.dim >= 0:
            start[self.dim], stop[self.dim] = self.start, self.stop
        return start, stop

    @property
    def byte_shape(self) -> Tuple[int, ...]:
        return packed_shape(self.entry.dtype, self.shape)

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.byte_shape:
            n *= d
        return n

    def bytes_of(self, whole: Any) -> Any:
        """This piece of ``whole``, the tensor's bytes shaped by ``packed_shape`` (a torch view)."""
        if self.dim < 0:
            return whole
        if self.dim == len(self.entry.shape) - 1 and BITS[self.entry.dtype] % 8:
            # packed last axis: element bounds to byte bounds (checked to be whole bytes)
            bits = BITS[self.entry.dtype]
            return whole.narrow(self.dim, self.start * bits // 8, (self.stop - self.start) * bits // 8)
        return whole.narrow(self.dim, self.start, self.stop - self.start)


def _check_dim(entry: Entry, dim: int, world: int) -> None:
    shape = entry.shape
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise ShardRequestError(f"{entry.file.path}: tensor `{entry.name}`: dim must be an int, not {dim!r}",
                                filename=entry.file.path, tensor=entry.name)
    if dim == -1:
        return
    if not 0 <= dim < len(shape):
        raise ShardRequestError(f"{entry.file.path}: tensor `{entry.name}` of shape {list(shape)} has no dimension "
                                f"{dim} (use 0..{len(shape) - 1}, or -1 for the whole tensor)",
                                filename=entry.file.path, tensor=entry.name)
    bits = BITS[entry.dtype]
    if bits % 8 == 0 or world == 1:
        return
    packed_last = shape and (shape[-1] * bits) % 8 == 0
    if not packed_last or (dim == len(shape) - 1 and any((a * bits) % 8 for a, _ in split_bounds(shape[dim], world))):
        raise ShardRequestError(f"{entry.file.path}: splitting tensor `{entry.name}` ({entry.dtype}, shape "
                                f"{list(shape)}) along dim {dim} over {world} ranks cuts through packed bytes",
                                filename=entry.file.path, tensor=entry.name)


def resolve(catalog: Mapping[str, Entry], requests: Iterable[Tuple[str, int]], world: int,
            rank: int) -> List[Tuple[List[Piece], Piece]]:
    """Checks every request on shared metadata; returns (every rank's piece, this rank's piece) each."""
    out = []
    for name, dim in requests:
        entry = catalog.get(name)
        if entry is None:
            raise TensorNotFound(f"tensor `{name}` is in none of the {len({e.file.path for e in catalog.values()})} "
                                 "added file(s)", tensor=name)
        _check_dim(entry, dim, world)
        if dim == -1 or world == 1:
            pieces = [Piece(entry, -1, 0, 0)] * world
        else:
            pieces = [Piece(entry, dim, a, b) for a, b in split_bounds(entry.shape[dim], world)]
        out.append((pieces, pieces[rank]))
    return out


class Group(ABC):
    """The loader's side of a process group (made by ``group_of``): its rank and size, and the
    agreement every rank reaches after local work (``agree``, an all-gather of a few ints).

    ``moves_bytes``: whether the group also carries tensor bytes (broadcast, scatter, send/recv of
    torch uint8 buffers on ``comm_device``, used by the scatter and hybrid modes); a group without
    them serves direct reads only, where every rank reads what it returns from the files.
    """

    moves_bytes = False
    comm_device = "cpu"

    def __init__(self, pg: Any, rank: int, size: int):
        if not 0 <= rank < size:
            raise ShardRequestError(f"this process is not a member of the process group {pg!r} "
                                    f"(its rank there is {rank}, of {size})")
        self.pg = pg
        self.rank = rank
        self.size = size

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def all_gather_ints(self, values: Sequence[int]) -> List[List[int]]:
        """Every rank's ``values`` (same length on every rank)."""
        return self._all_gather(list(values)) if self.distributed else [list(values)]

    @abstractmethod
    def _all_gather(self, values: List[int]) -> List[List[int]]:
        """Every rank's ``values``, in a group of more than one rank."""

    def agree(self, error: Optional[BaseException], what: str, checks: Sequence[int] = ()) -> List[List[int]]:
        """One collective after local work: re-raises ``error`` here and a PeerRankError on the other ranks.

        ``checks`` are extra numbers gathered along (e.g. a fingerprint every rank must share).
        """
        rows = self.all_gather_ints([0 if error is None else 1, *checks])
        if error is not None:
            raise error
        failed = [r for r, row in enumerate(rows) if row[0]]
        if failed:
            raise PeerRankError(f"{what} failed on rank(s) {failed}; see their logs")
        return [row[1:] for row in rows]


class LocalGroup(Group):
    """One process: ``None``, ``SingleGroup()`` or any object whose ``size()`` is 1."""

    def __init__(self, pg: Any, device: Any = None):
        size = int(pg.size())
        if size > 1:
            raise ArgumentTypeError(f"a process group of {size} ranks must be a torch.distributed ProcessGroup or a "
                            f"paddle.distributed Group, not {type(pg).__name__}")
        super().__init__(pg, int(pg.rank()), size)

    def _all_gather(self, values: List[int]) -> List[List[int]]:
        return [values]


class TorchGroup(Group):
    """A torch.distributed ProcessGroup. Collectives run on ``comm_device``: the CPU for gloo, the
    loader's CUDA device for NCCL."""

    moves_bytes = True

    def __init__(self, pg: Any, device: Any = None):
        super().__init__(pg, int(pg.rank()), int(pg.size()))
        if self.distributed:
            import torch.distributed as dist

            if dist.get_backend(pg) == "nccl":
                self.comm_device = str(device) if device is not None and not device.is_cpu else "cuda"

    def _all_gather(self, values: List[int]) -> List[List[int]]:
        import torch
        import torch.distributed as dist

        mine = torch.tensor(values, dtype=torch.int64, device=self.comm_device)
        out = [torch.empty_like(mine) for _ in range(self.size)]
        dist.all_gather(out, mine, group=self.pg)
        return [t.tolist() for t in out]

    def empty(self, nbytes: int) -> Any:
        import torch

        return torch.empty(nbytes, dtype=torch.uint8, device=self.comm_device)

    def broadcast(self, buf: Any, src: int) -> Any:
        """Starts a broadcast; returns its work handle (wait() before reading ``buf``)."""
        import torch.distributed as dist

        return dist.broadcast(buf, group=self.pg, group_src=src, async_op=True)

    def scatter(self, out: Any, chunks: Optional[List[Any]], src: int) -> Any:
        """Starts a scatter; returns its work handle (wait() before reading ``out``)."""
        import torch.distributed as dist

        return dist.scatter(out, chunks, group=self.pg, group_src=src, async_op=True)

    def all_to_all(self, out: Any, buf: Any, out_sizes: List[int], sizes: List[int]) -> None:
        """Sends ``sizes[s]`` bytes of ``buf`` (in rank order) to each rank ``s``, receiving
        ``out_sizes[s]`` bytes from each into ``out``."""
        import torch.distributed as dist

        dist.all_to_all_single(out, buf, out_sizes, sizes, group=self.pg)

    def send(self, buf: Any, dst: int) -> None:
        import torch.distributed as dist

        dist.send(buf, group=self.pg, group_dst=dst)

    def recv(self, buf: Any, src: int) -> None:
        import torch.distributed as dist

        dist.recv(buf, group=self.pg, group_src=src)


class PaddleGroup(Group):
    """A paddle.distributed Group (``paddle.distributed.get_group()``, FastDeploy's): gloo on the
    CPU, NCCL on GPUs. It serves direct reads only (``moves_bytes`` is False): tensor bytes never
    cross it, so every rank must be able to open every file."""

    def __init__(self, pg: Any, device: Any = None):
        super().__init__(pg, int(pg.rank), int(pg.nranks))

    def _all_gather(self, values: List[int]) -> List[List[int]]:
        import paddle
        import paddle.distributed as dist

        out: List[Any] = []  # on paddle's current place: the CPU for gloo, this rank's GPU for NCCL
        dist.all_gather(out, paddle.to_tensor(values, dtype="int64"), group=self.pg)
        return [t.numpy().tolist() for t in out]


# The package a process group's type comes from -> the Group that drives it.
_GROUP_KINDS = {"torch": TorchGroup, "paddle": PaddleGroup}


def group_of(pg: Any, device: Any = None) -> Group:
    """The Group for ``pg``: ``None``/``SingleGroup()``, a torch ProcessGroup or a paddle Group."""
    if pg is None:
        from ..common import SingleGroup

        pg = SingleGroup()
    kind = _GROUP_KINDS.get(type(pg).__module__.partition(".")[0], LocalGroup)
    return kind(pg, device)


def _digest(parts: Iterable[str]) -> int:
    """56 bits of a hash of ``parts`` (fits a collective's int64)."""
    h = hashlib.blake2b(digest_size=7)
    for part in parts:
        h.update(part.encode() + b"\n")
    return int.from_bytes(h.digest(), "little")


def fingerprint(files_by_rank: Mapping[int, Sequence[SafeTensorsFile]]) -> int:
    """A number every rank computes alike when every rank added the same ``{rank: files}``."""
    return _digest(f"{rank}\0{f.path if f.remote is not None else os.path.abspath(f.path)}\0{f.size}"
                   for rank in sorted(files_by_rank) for f in files_by_rank[rank])


def object_versions(files_by_rank: Mapping[int, Sequence[SafeTensorsFile]]) -> Dict[str, int]:
    """``{url: digest of the version (ETag, version id) this rank read}`` for every object, in rank order."""
    objects = [f.remote for rank in sorted(files_by_rank) for f in files_by_rank[rank] if f.remote is not None]
    return {o.url.url: _digest([f"{o.url.url}\0{o.etag}\0{o.version}"]) for o in objects}


def versions_fingerprint(files_by_rank: Mapping[int, Sequence[SafeTensorsFile]]) -> int:
    """A number every rank computes alike when every rank read the same version (ETag, version id)
    of every object (0 without objects): each rank's ranged GETs are pinned to the one it read."""
    versions = object_versions(files_by_rank)
    return _digest(str(v) for v in versions.values()) if versions else 0


def names_fingerprint(names: Iterable[str]) -> int:
    """A number every rank computes alike when every rank holds the same tensor names, in the same order."""
    return _digest(names)


def _chunks(items: List[Tuple[List[Piece], Piece]], limit: int) -> Iterable[List[Tuple[List[Piece], Piece]]]:
    """Small tensors in consecutive groups of at most ``limit`` bytes per rank; large ones alone
    (sent from where they lie, without a packing copy)."""
    cur: List[Tuple[List[Piece], Piece]] = []
    size = 0
    for item in items:
        n = max(align_up(p.nbytes, ALIGN) for p in item[0])
        if n >= PACK_BELOW:
            yield [item]
            continue
        if cur and size + n > limit:
            yield cur
            cur, size = [], 0
        cur.append(item)
        size += n
    if cur:
        yield cur


LocalBytes = Callable[[Entry], Any]  # a tensor the owner holds -> its bytes (torch uint8, packed_shape)


def _to_comm(group: TorchGroup, t: Any) -> Any:
    return t if group.comm_device == "cpu" else t.to(group.comm_device, non_blocking=True)


def _broadcast(group: TorchGroup, owner: int, items: List[Tuple[List[Piece], Piece]], local: LocalBytes,
               out: Dict[str, Any], pending: List[Any]) -> None:
    pieces = [mine for _, mine in items]
    if group.rank == owner and len(pieces) == 1:
        # One tensor: send it from where it lies (no packing copy; zero-copy result on the owner).
        buf = _to_comm(group, local(pieces[0].entry).reshape(-1))
        pending.append(group.broadcast(buf, owner))
        out[pieces[0].entry.name] = buf
        return
    offsets, total = [], 0
    for p in pieces:
        offsets.append(total)
        total += align_up(p.nbytes, ALIGN)
    buf = group.empty(total)
    if group.rank == owner:
        for p, off in zip(pieces, offsets):
            buf[off:off + p.nbytes].copy_(local(p.entry).reshape(-1))
    pending.append(group.broadcast(buf, owner))
    for p, off in zip(pieces, offsets):
        out[p.entry.name] = buf[off:off + p.nbytes]


def _contiguous_blocks(pieces: List[Piece]) -> bool:
    """Whether every rank's block is one run of the tensor's bytes, all of one size (sent as views)."""
    p = pieces[0]
    return all(d == 1 for d in p.entry.shape[:p.dim]) and len({q.nbytes for q in pieces}) == 1


def _scatter_views(group: TorchGroup, owner: int, pieces: List[Piece], local: LocalBytes, out: Dict[str, Any],
                   pending: List[Any]) -> None:
    """One tensor whose blocks are equal runs of its bytes: scattered straight from the owner's buffer."""
    mine = pieces[group.rank]
    recv = group.empty(mine.nbytes)
    chunks = None
    if group.rank == owner:
        whole = local(mine.entry)
        chunks = [_to_comm(group, p.bytes_of(whole).reshape(-1)) for p in pieces]
    pending.append(group.scatter(recv, chunks, owner))
    out[mine.entry.name] = recv


def _scatter(group: TorchGroup, owner: int, items: List[Tuple[List[Piece], Piece]], local: LocalBytes,
             out: Dict[str, Any], pending: List[Any]) -> None:
    world = group.size
    if len(items) == 1 and items[0][1].nbytes and _contiguous_blocks(items[0][0]):
        _scatter_views(group, owner, items[0][0], local, out, pending)
        return
    offsets = [[0] * len(items) for _ in range(world)]  # offsets[rank][item]
    sizes = [0] * world
    for k, (pieces, _) in enumerate(items):
        for r in range(world):
            offsets[r][k] = sizes[r]
            sizes[r] += align_up(pieces[r].nbytes, ALIGN)
    width = max(sizes)  # uneven blocks: every rank's chunk is padded to the widest
    recv = group.empty(width)
    chunks = None
    if group.rank == owner:
        send = group.empty(width * world)
        for k, (pieces, _) in enumerate(items):
            whole = local(pieces[0].entry)
            for r, p in enumerate(pieces):
                at = r * width + offsets[r][k]
                send[at:at + p.nbytes].view(p.byte_shape).copy_(p.bytes_of(whole))
        chunks = [send[r * width:(r + 1) * width] for r in range(world)]
    if width:
        pending.append(group.scatter(recv, chunks, owner))
    for k, (_, mine) in enumerate(items):
        off = offsets[group.rank][k]
        out[mine.entry.name] = recv[off:off + mine.nbytes]


def exchange(group: TorchGroup, resolved: List[Tuple[List[Piece], Piece]], local: LocalBytes,
             limit: int = DEFAULT_COLLECTIVE_BYTES) -> Dict[str, Any]:
    """This rank's piece of every request, as contiguous uint8 torch tensors on ``group.comm_device``.

    Per owner rank (in rank order, so every rank issues the same calls): whole tensors go out in
    packed broadcasts, split tensors in packed scatters, each call carrying at most ``limit``
    bytes per rank.
    """
    out: Dict[str, Any] = {}
    pending: List[Any] = []  # collectives run while the next send buffer is packed
    for owner in range(group.size):
        mine = [item for item in resolved if item[1].entry.owner == owner]
        whole = [item for item in mine if item[1].dim < 0]
        split = [item for item in mine if item[1].dim >= 0]
        for chunk in _chunks(whole, limit):
            _broadcast(group, owner, chunk, local, out, pending)
        for chunk in _chunks(split, limit):
            _scatter(group, owner, chunk, local, out, pending)
    for work in pending:
        work.wait()
    return out


def row_piece(entry: Entry, world: int, rank: int) -> Piece:
    """Block ``rank`` of a tensor's rows (dim 0): one contiguous range of its bytes."""
    start, stop = split_bounds(entry.shape[0], world)[rank]
    return Piece(entry, 0, start, stop)


def blocks_from_rows(group: TorchGroup, items: Sequence[Tuple[List[Piece], Piece]],
                     rows: Mapping[str, Any]) -> Dict[str, Any]:
    """This rank's block along an inner dim of each tensor, as a contiguous uint8 torch tensor on
    ``group.comm_device``, from the blocks of rows each rank holds (``rows[name]``: this rank's, a
    uint8 tensor shaped by its ``row_piece``'s byte_shape). One all-to-all per tensor: rank ``s``
    gets ``s``'s columns of every rank's rows and stacks them."""
    import torch

    out: Dict[str, Any] = {}
    for pieces, mine in items:
        entry = mine.entry
        if Piece(entry, -1, 0, 0).nbytes == 0:  # nothing to move (the same on every rank)
            out[entry.name] = group.empty(0)
            continue
        sends = [p.bytes_of(rows[entry.name]).contiguous().reshape(-1) for p in pieces]
        per_row = mine.nbytes // entry.shape[0]  # bytes of one row of this rank's block
        bounds = split_bounds(entry.shape[0], group.size)
        sizes = [(stop - start) * per_row for start, stop in bounds]
        recv = group.empty(sum(sizes))
        group.all_to_all(recv, _to_comm(group, torch.cat(sends)), sizes, [s.numel() for s in sends])
        out[entry.name] = recv  # the rows of every rank in rank order: this rank's block, row by row
    return out


def push(group: TorchGroup, entry: Entry, dst: int, local: LocalBytes) -> Optional[Any]:
    """The tensor's bytes on rank ``dst`` (sent point to point by its owner); None elsewhere."""
    whole = Piece(entry, -1, 0, 0)
    if group.rank == entry.owner == dst:
        return local(entry).reshape(-1)
    if group.rank == entry.owner:
        group.send(_to_comm(group, local(entry).reshape(-1).contiguous()), dst)
        return None
    if group.rank == dst:
        buf = group.empty(whole.nbytes)
        group.recv(buf, entry.owner)
        return buf
    return None
