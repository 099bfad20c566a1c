"""FastDeploy's call sequence (PaddlePaddle): per batch of ``world`` files,
``SafeTensorsFileLoader(pg, "gpu:N" or "cpu", nogds=True, debug_log=False, framework="paddle")``,
``add_filenames({i: [file]})``, ``copy_files_to_device()``, ``get_tensor`` of every key of
``key_to_rank_lidx``, a clone kept and the yielded tensor's storage cleared, ``fb.close()``,
``loader.close()`` — in one process and over 2 gloo ranks, in a torch process group and in a paddle
one (``paddle.distributed.get_group()``, FastDeploy's multi-GPU case), every tensor compared bit for
bit against safetensors. Skipped, saying so, where paddlepaddle is not installed
(``pip install fastsafetensors[paddle]``)."""

from __future__ import annotations

import sys
import warnings

import pytest

pytest.importorskip("torch")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # paddle warns at import that ccache is missing
    paddle = pytest.importorskip("paddle", reason="paddlepaddle is not installed (pip install paddlepaddle)")

from paddle.distributed.communication.group import Group as PaddleGroup  # noqa: E402

from fastsafetensors import ParallelLoader, SafeTensorsFileLoader, SingleGroup  # noqa: E402
from fastsafetensors.errors import ShardRequestError, UnsupportedDtype  # noqa: E402
from fastsafetensors.st_types import DType, to_dtype  # noqa: E402

from . import ranks  # noqa: E402
from .. import tp_harness  # noqa: E402
from ..helpers import tensor_bytes  # noqa: E402
from .ranks import reference  # noqa: E402

# Paddle has no fp4 and no float8_e8m0fnu: the last file (fp4 weights, e8m0 scales) is left out.
PADDLE_FILES = slice(0, 3)


def same(got, want, what):
    """A paddle tensor with the same type name, shape and bytes as the safetensors (torch) one."""
    assert isinstance(got, paddle.Tensor), f"{what}: got {type(got).__name__}"
    got_type, want_type = str(got.dtype).rpartition(".")[2], str(want.dtype).rpartition(".")[2]
    assert got_type == want_type and list(got.shape) == list(want.shape), \
        f"{what}: got {got.dtype} {list(got.shape)}, want {want.dtype} {list(want.shape)}"
    data = got.view(paddle.uint8) if got.dtype != paddle.bool else got.astype(paddle.uint8)
    assert data.numpy().tobytes() == tensor_bytes(want), f"{what}: bytes differ from safetensors"


def _world(pg):
    """The group's size (FastDeploy reads its paddle group's from ``paddle.distributed.get_world_size()``)."""
    return pg.nranks if isinstance(pg, PaddleGroup) else pg.size()


def _weights(pg, files, device):
    """FastDeploy's fastsafetensors_weights_iterator."""
    world = _world(pg)
    for batch in [files[i:i + world] for i in range(0, len(files), world)]:
        loader = SafeTensorsFileLoader(pg, device, nogds=True, debug_log=False, framework="paddle")
        loader.add_filenames({i: [f] for i, f in enumerate(batch)})
        try:
            fb = loader.copy_files_to_device()
            try:
                for k in list(fb.key_to_rank_lidx.keys()):
                    yield k, fb.get_tensor(k)
            finally:
                fb.close()
        finally:
            loader.close()


def seq_fastdeploy_cpu(pg, files):
    """load_tp_checkpoint_v1 on the CPU: clone each weight, then clear the yielded tensor's storage."""
    files = files[PADDLE_FILES]
    ref = reference(tuple(files))
    state = {}
    for key, weight in _weights(pg, files, "cpu"):
        assert key not in state, f"{key} yielded twice"
        state[key] = weight.clone()
        weight.value().get_tensor()._clear()
    assert sorted(state) == sorted(ref)
    for key, t in state.items():
        same(t, ref[key], key)


def seq_dtype_conversion(pg, files):
    """dtype= converts floating tensors with paddle (a paddle dtype is accepted too)."""
    files = files[PADDLE_FILES]
    ref = reference(tuple(files))
    world = _world(pg)
    loader = SafeTensorsFileLoader(pg, "cpu", nogds=True, framework="paddle")
    loader.add_filenames({r: files[r::world] for r in range(world)})
    fb = loader.copy_files_to_device(dtype=paddle.float32)
    same(fb.get_tensor("q"), ref["q"].float(), "q as float32")
    same(fb.get_tensor("ids"), ref["ids"], "ids (integers are not converted)")
    fb.close()
    loader.close()


def seq_parallel_loader(pg, files):
    """ParallelLoader over the group: every rank reads every file (the paddle backend shares no bytes over a
    torch group, where direct_read=True asks for that; a paddle group carries no bytes, so it is the default)."""
    files = files[PADDLE_FILES]
    ref = reference(tuple(files))
    direct = {} if isinstance(pg, PaddleGroup) else {"direct_read": True}
    pl = ParallelLoader(pg, files, device="cpu", framework="paddle", **direct)
    got = dict(pl.iterate_weights())
    pl.close()
    assert sorted(got) == sorted(ref)
    for key, t in got.items():
        same(t, ref[key], key)


def seq_direct_read_false(pg, files):
    """direct_read=False in a group would move bytes over the group: refused on every rank, saying why."""
    loader = SafeTensorsFileLoader(pg, "cpu", nogds=True, framework="paddle", direct_read=False)
    loader.add_filenames({r: [f] for r, f in enumerate(files[:_world(pg)])})
    if _world(pg) == 1:
        same(loader.copy_files_to_device().get_tensor("q"), reference((files[0],))["q"], "q")
    else:
        why = "carries no tensor bytes" if isinstance(pg, PaddleGroup) else "needs framework='pytorch'"
        with pytest.raises(ValueError, match=why):
            loader.copy_files_to_device()
    loader.close()


test_single_process, test_two_ranks = ranks.client_tests(__name__)


@pytest.mark.timeout(tp_harness.GROUP_TIMEOUT_S + 60)
@pytest.mark.parametrize("name", sorted(ranks.sequences(sys.modules[__name__])))
def test_two_ranks_of_a_paddle_group(name):
    """FastDeploy's multi-GPU case: the group is paddle.distributed.get_group() (gloo on the CPU here)."""
    ranks.assert_ranks("test_fastdeploy", 2, name, "paddle")


def test_paddle_dtypes_are_accepted():
    assert to_dtype(paddle.bfloat16) is DType.BF16 and to_dtype(paddle.float16) is DType.F16


def test_types_paddle_lacks_raise_at_the_getter():
    loader = SafeTensorsFileLoader(None, "cpu", nogds=True, framework="paddle")
    loader.add_filenames({0: [ranks.checkpoint()[3]]})
    fb = loader.copy_files_to_device()
    with pytest.raises(UnsupportedDtype, match="paddle has no type for safetensors dtype F4"):
        fb.get_tensor("wq_f4")
    loader.close()


@pytest.mark.skipif(paddle.is_compiled_with_cuda(), reason="checks a CPU build of paddle")
def test_gpu_device_without_cuda_says_so():
    # "gpu:0" is paddle's name for cuda:0; a CPU build of paddle cannot place tensors there.
    with pytest.raises(RuntimeError, match="device cuda:0 was requested but this paddle build has no CUDA"):
        SafeTensorsFileLoader(SingleGroup(), "gpu:0", nogds=True, framework="paddle")


def test_a_paddle_group_this_process_is_not_in_is_refused():
    # paddle hands a rank outside new_group(ranks) a Group whose rank is -1; without the check that
    # rank would index the last rank's blocks.
    outsider = PaddleGroup(-1, 99, [0, 1])
    with pytest.raises(ShardRequestError, match=r"not a member of the process group .*its rank there is -1, of 2"):
        SafeTensorsFileLoader(outsider, "cpu", nogds=True, framework="paddle")
