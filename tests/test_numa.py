"""NUMA placement of the GPU reader's lanes: the sysfs lookups (against fake trees), and the
reader over a HostDevice that reports a PCI bus id, whose lanes' real affinity is checked from
inside them. Loads are compared byte for byte with safetensors."""

import os

import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file, save_file  # noqa: E402

from fastsafetensors import _cpp, loader as loader_mod  # noqa: E402
from fastsafetensors._src.device_engine import get_device_reader, read_into_device, release_device_readers  # noqa: E402
from fastsafetensors._src.files import read_headers  # noqa: E402
from fastsafetensors.loader import SafeTensorsFileLoader  # noqa: E402
from fastsafetensors._src.plan import plan_load  # noqa: E402

BUS = "0000:3b:00.0"
ALLOWED = sorted(os.sched_getaffinity(0))
# Pinning is only visible where the process may run on more than one CPU.
needs_two_cpus = pytest.mark.skipif(len(ALLOWED) < 2, reason="this process may run on one CPU only")


def fake_sysfs(root, node_cpus, gpu_node="1", online=None, bus=BUS):
    """A sysfs tree with NUMA nodes {n: cpulist} and a GPU at `bus` on `gpu_node` (text as written)."""
    nodes = root / "devices" / "system" / "node"
    nodes.mkdir(parents=True)
    (nodes / "online").write_text((online if online is not None else ",".join(str(n) for n in node_cpus)) + "\n")
    for n, cpus in node_cpus.items():
        (nodes / f"node{n}").mkdir()
        (nodes / f"node{n}" / "cpulist").write_text(cpus + "\n")
    if gpu_node is not None:
        dev = root / "bus" / "pci" / "devices" / bus
        dev.mkdir(parents=True)
        (dev / "numa_node").write_text(gpu_node + "\n")
    return str(root)


def two_nodes(root):
    """The GPU's node holds only this process's last CPU; the other node the rest."""
    rest = ",".join(str(c) for c in ALLOWED[:-1])
    return fake_sysfs(root, {0: rest, 1: str(ALLOWED[-1])})


# -- the cpulist parser --

@pytest.mark.parametrize("text,cpus", [
    ("0", [0]),
    ("0-3", [0, 1, 2, 3]),
    ("0-3,8-11\n", [0, 1, 2, 3, 8, 9, 10, 11]),
    ("5,1,3-4", [1, 3, 4, 5]),
    ("2,2-3", [2, 3]),
    ("7-7", [7]),
    ("", []),
    ("\n", []),
    ("8191", [8191]),
])
def test_cpulist_parses_kernel_lists(text, cpus):
    assert _cpp.testing.parse_cpulist(text) == cpus


@pytest.mark.parametrize("text", [
    "3-1", "1-", "-1", "1,", ",1", "1,,2", "a", "0-3 ", " 0", "0-3,x", "1:2", "0-7:2", "1\n\n", "0x1",
    "8192", "99999999999999999999", "1-99999999999", "0--3", "1.5",
])
def test_cpulist_refuses_malformed(text):
    assert _cpp.testing.parse_cpulist(text) is None


@pytest.mark.parametrize("given,expected", [
    ("0000:3b:00.0", "0000:3b:00.0"),
    ("0000:3B:00.0", "0000:3b:00.0"),
    ("00000000:3B:00.0", "0000:3b:00.0"),
    ("3b:00.0", "0000:3b:00.0"),
    ("10000:01:1f.7", "10000:01:1f.7"),
    ("", None), ("0000:3b:00", None), ("0000:3b:20.0", None), ("0000:3b:00.8", None), ("0000:3g:00.0", None),
    ("../../x:00:00.0", None), ("0000:3b:00.0\n", None),
])
def test_bus_id_in_the_form_sysfs_uses(given, expected):
    assert _cpp.testing.normalize_pci_bus_id(given) == expected


# -- lookups against fake sysfs trees --

def test_lookup_finds_node_and_its_cpus(tmp_path):
    root = fake_sysfs(tmp_path, {0: "0-3,8-11", 1: "4-7,12-15"}, gpu_node="1")
    assert _cpp.pci_numa_node(BUS, root) == 1
    assert _cpp.pci_numa_node("0000:3B:00.0", root) == 1  # as CUDA spells it
    assert _cpp.testing.numa_node_cpus(1, root) == [4, 5, 6, 7, 12, 13, 14, 15]
    assert _cpp.testing.numa_node_cpus(2, root) is None
    assert _cpp.testing.numa_node_cpus(-1, root) is None
    where = _cpp.testing.numa_placement(BUS, list(range(16)), root)
    assert where == {"bus_id": BUS, "node": 1, "cpus": [4, 5, 6, 7, 12, 13, 14, 15], "reason": ""}
    # only the CPUs the process may use
    assert _cpp.testing.numa_placement(BUS, [0, 5, 13, 20], root)["cpus"] == [5, 13]


@pytest.mark.parametrize("text", ["-1", "abc", "", "1 ", "99999999999"])
def test_unknown_or_malformed_node_means_unknown(tmp_path, text):
    root = fake_sysfs(tmp_path, {0: "0", 1: "1"}, gpu_node=text)
    assert _cpp.pci_numa_node(BUS, root) == -1
    where = _cpp.testing.numa_placement(BUS, [0, 1], root)
    assert where["cpus"] == [] and where["node"] == -1 and "unknown" in where["reason"]


def test_reasons_for_leaving_threads_alone(tmp_path):
    cases = {
        "missing device": (fake_sysfs(tmp_path / "a", {0: "0", 1: "1"}, gpu_node=None), [0, 1], "node is unknown"),
        "one node": (fake_sysfs(tmp_path / "b", {0: "0-1"}, gpu_node="0"), [0, 1], "one NUMA node"),
        "bad cpulist": (fake_sysfs(tmp_path / "c", {0: "0", 1: "1-x"}), [0, 1], "CPUs of node 1 are unknown"),
        "bad online": (fake_sysfs(tmp_path / "d", {0: "0", 1: "1"}, online="0-"), [0, 1], "nodes are unknown"),
        "not allowed": (fake_sysfs(tmp_path / "e", {0: "0", 1: "1"}), [0], "none of node 1's CPUs"),
        "already there": (fake_sysfs(tmp_path / "f", {0: "0", 1: "1-2"}), [1, 2], "already runs on node 1"),
        "no sysfs": (str(tmp_path / "nothing"), [0, 1], "nodes are unknown"),
    }
    for case, (root, allowed, reason) in cases.items():
        where = _cpp.testing.numa_placement(BUS, allowed, root)
        assert where["cpus"] == [], case
        assert reason in where["reason"], (case, where)
    assert "no PCI bus id" in _cpp.testing.numa_placement("", [0, 1], str(tmp_path))["reason"]
    assert "not a PCI bus id" in _cpp.testing.numa_placement("junk", [0, 1], str(tmp_path))["reason"]


# -- the reader --

@pytest.fixture
def ckpt(tmp_path):
    g = torch.Generator().manual_seed(3)
    tensors = {f"w{i}": torch.randn(1000 + 37 * i, generator=g).to([torch.float32, torch.bfloat16][i % 2])
               for i in range(12)}
    path = str(tmp_path / "m.safetensors")
    save_file(tensors, path)
    return path


@pytest.fixture
def readers():
    yield
    release_device_readers()


def _device(bus=BUS, delay_us=20):
    dev = _cpp.testing.HostDevice(copy_delay_us=delay_us)
    dev.set_pci_bus_id(bus)
    return dev


def _read_exact(reader, dev, path):
    plan = plan_load(read_headers([path]))
    bufs = [_cpp.DeviceBuffer.allocate(dev, n) for n in plan.buffer_sizes]
    stats = reader.read(plan.sources(), plan.ranges, [b.data_ptr for b in bufs], list(plan.buffer_sizes))
    ref = load_file(path)
    for name, loc in plan.tensors.items():
        got = torch.from_dlpack(bufs[loc.buffer].view(loc.offset, [loc.info.nbytes], 1, 8))
        assert got.numpy().tobytes() == ref[name].reshape(-1).view(torch.uint8).numpy().tobytes(), name
    return stats


@needs_two_cpus
def test_reader_lanes_run_on_the_gpu_node(tmp_path, ckpt):
    root = two_nodes(tmp_path / "sys")
    dev = _device()
    reader = _cpp.DeviceReader(dev, 2, 4 * 8192, 1, sysfs_root=root)
    assert reader.placement == {"bus_id": BUS, "node": 1, "cpus": [ALLOWED[-1]], "reason": ""}
    reader_stats = _read_exact(reader, dev, ckpt)
    assert reader.worker_cpus[:2] == [[ALLOWED[-1]]] * 2  # read inside each staging lane's thread
    assert reader_stats["numa_node"] == 1 and reader_stats["numa_cpus"] == [ALLOWED[-1]]
    # the calling thread ran a lane too, and has its own affinity back
    assert sorted(os.sched_getaffinity(0)) == ALLOWED
    del reader
    assert dev.live_pinned_bytes == 0


@needs_two_cpus
def test_mapping_lanes_are_placed_too(tmp_path, ckpt):
    root = two_nodes(tmp_path / "sys")
    dev = _device()
    reader = _cpp.DeviceReader(dev, 1, 2 * 8192, 2, sysfs_root=root)
    plan = plan_load(read_headers([ckpt]))
    bufs = [_cpp.DeviceBuffer.allocate(dev, n) for n in plan.buffer_sizes]
    stats = reader.read(plan.sources(), plan.ranges, [b.data_ptr for b in bufs], list(plan.buffer_sizes),
                        stage_cached=False, warm_fraction=0.0)
    assert stats["mapped_bytes"] > 0
    assert reader.worker_cpus == [[ALLOWED[-1]]] * 3


@needs_two_cpus
def test_turned_off_or_no_bus_id_leaves_lanes_alone(tmp_path, ckpt):
    root = two_nodes(tmp_path / "sys")
    for dev, numa, reason in [(_device(), False, "turned off"), (_device(bus=""), True, "no PCI bus id")]:
        reader = _cpp.DeviceReader(dev, 2, 4 * 8192, 0, numa=numa, sysfs_root=root)
        assert reader.placement["cpus"] == [] and reason in reader.placement["reason"]
        stats = _read_exact(reader, dev, ckpt)
        assert reader.worker_cpus == [ALLOWED] * 2
        assert stats["numa_node"] == -1 and stats["numa_cpus"] == []


@needs_two_cpus
def test_environment_turns_placement_off(tmp_path, ckpt, monkeypatch, readers):
    root = two_nodes(tmp_path / "sys")
    dev = _device()
    assert get_device_reader(dev, 2, 4 * 8192, sysfs_root=root).placement["cpus"] == [ALLOWED[-1]]
    monkeypatch.setenv("FASTSAFETENSORS_NUMA", "0")
    off = get_device_reader(dev, 2, 4 * 8192, sysfs_root=root)
    assert off.placement["reason"] == "turned off"
    _read_exact(off, dev, ckpt)
    assert off.worker_cpus[:off.staging_lanes] == [ALLOWED] * 2
    assert all(cpus in ([], ALLOWED) for cpus in off.worker_cpus)  # mapping lanes, if they ran


@needs_two_cpus
@pytest.mark.parametrize("set_numa", [True, False])
def test_set_numa_of_the_03_loader_reaches_the_reader(tmp_path, ckpt, monkeypatch, readers, set_numa, caplog):
    """The 0.3 loader to "cuda", with the CUDA device replaced by a HostDevice on a fake two-node
    machine (and torch's CUDA allocator by engine buffers): set_numa decides where the lanes run,
    and every tensor is bit-exact."""
    root = two_nodes(tmp_path / "sys")
    monkeypatch.setattr(loader_mod, "check_device", lambda *a: None)
    dev = _device()
    seen = {}

    def on_host_device(plan, framework, device, **kw):
        seen.update(kw)
        return read_into_device(plan, None, device, engine_device=dev, sysfs_root=root, **kw)

    monkeypatch.setattr(loader_mod, "read_into_device", on_host_device)
    caplog.set_level("DEBUG", logger="fastsafetensors")
    ld = SafeTensorsFileLoader(None, "cuda:0", bbuf_size_kb=64, max_threads=2, nogds=True, set_numa=set_numa)
    ld.add_filenames({0: [ckpt]})
    fb = ld.copy_files_to_device()
    ref = load_file(ckpt)
    for name in fb.get_keys():
        t = fb.get_tensor(name, device="cpu")  # the HostDevice's memory is host memory
        assert t.dtype == ref[name].dtype and torch.equal(t.view(torch.uint8), ref[name].view(torch.uint8)), name
    assert seen["numa"] is set_numa
    reader = get_device_reader(dev, ld.max_threads, 64 * 1024, numa=set_numa, sysfs_root=root)  # the loader's
    lanes = reader.worker_cpus[:reader.staging_lanes]
    assert lanes == [[ALLOWED[-1]] if set_numa else ALLOWED] * reader.staging_lanes
    logged = [r.getMessage() for r in caplog.records if "GPU reader for host" in r.getMessage()]
    assert logged and (f"NUMA node 1, CPUs [{ALLOWED[-1]}]" in logged[0]) == set_numa
    ld.close()
