"""rtp-llm's call sequence: ``from fastsafetensors import AutoLoader``, the keyword checks it makes
on ``AutoLoader.__init__`` before passing ``local_copyout_filter`` and ``stacked_moe_tensors`` (or
the older ``dim0_split_templates``), the configuration through ``FASTSAFETENSORS_CONFIG_JSON`` /
``FASTSAFETENSORS_CONFIG``, then ``iterate_weights()`` and ``close()`` — in one process and over 2
gloo ranks, bit for bit against safetensors."""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import tempfile

import pytest

pytest.importorskip("torch")

from fastsafetensors import AutoLoader, LoaderConfig, SingleGroup, load_config  # noqa: E402
from fastsafetensors.errors import ConfigError, FastSafeTensorsError  # noqa: E402

from . import ranks  # noqa: E402
from .ranks import reference, same  # noqa: E402

_VARIABLES = ("FASTSAFETENSORS_CONFIG", "FASTSAFETENSORS_CONFIG_JSON")
# "router" (4, 16) stands for a stacked MoE tensor: 4 experts of 16 values along dim 0.
STACKED = {"router": "layers.0.experts.{expert_id}.router"}


@contextlib.contextmanager
def configured(**env):
    """The two configuration variables set as given (the others unset) for the block."""
    saved = {k: os.environ.pop(k, None) for k in _VARIABLES}
    os.environ.update(env)
    try:
        yield
    finally:
        for k in _VARIABLES:
            os.environ.pop(k, None)
            if saved[k] is not None:
                os.environ[k] = saved[k]


def _stacked_keyword():
    """rtp-llm's capability check: a named parameter (a **kwargs signature does not count)."""
    params = inspect.signature(AutoLoader.__init__).parameters
    for name in ("stacked_moe_tensors", "dim0_split_templates"):
        if name in params and params[name].kind is not inspect.Parameter.VAR_KEYWORD:
            return name
    return None


def _expected(files, keep=None, templates=None):
    """What rtp-llm expects to get: every tensor, stacked ones split per expert, then filtered."""
    out = {}
    for name, t in reference(tuple(files)).items():
        parts = {templates[name].format(expert_id=i): t[i] for i in range(t.shape[0])} \
            if templates and name in templates else {name: t}
        out.update({n: p for n, p in parts.items() if keep is None or keep(n)})
    return out


def _check(loader, want, what):
    got = {}
    for name, t in loader.iterate_weights():
        assert name not in got, f"{what}: {name} yielded twice"
        got[name] = t
    loader.close()
    loader.close()  # idempotent, as rtp-llm closes on every path
    assert sorted(got) == sorted(want), f"{what}: yielded {sorted(got)}, want {sorted(want)}"
    for name, t in got.items():
        same(t, want[name], f"{what} {name}")


def _rank_local(pg):
    """Rank r keeps experts r, r + n, ... of the stacked tensor, experts.N.w with N % n == r, and the rest."""
    rank, n = pg.rank(), max(2, pg.size())

    def keep(name):
        parts = name.split(".")
        if name.startswith("layers.0.experts."):
            return int(parts[3]) % n == rank
        return not name.startswith("experts.") or int(parts[1]) % n == rank
    return keep


def seq_defaults(pg, files):
    """No configuration: AutoLoader(pg, files, device=) yields every tensor whole."""
    with configured():
        loader = AutoLoader(pg, files, device="cpu")
        assert loader.config.source == "defaults"
        _check(loader, _expected(files), "defaults")


def seq_config_json_pipeline(pg, files):
    """FASTSAFETENSORS_CONFIG_JSON as rtp-llm sets it (nogds copier, a pipeline, base tuning)."""
    config = {"loader": "base", "base": {"copier_type": "nogds", "bbuf_size_kb": 1024, "max_threads": 2},
              "parallel": {"use_pipeline": True, "queue_size": 1, "use_tqdm_on_load": False}}
    with configured(FASTSAFETENSORS_CONFIG_JSON=json.dumps(config)):
        loader = AutoLoader(pg, files, device="cpu")
        assert loader.config.queue_size == 1 and loader.config.get_extension_config("base")["max_threads"] == 2
        _check(loader, _expected(files), "config json")


def seq_config_file(pg, files):
    """FASTSAFETENSORS_CONFIG naming a file."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"base": {"copier_type": "nogds"}, "debug": {"set_numa": False}}, f)
    try:
        with configured(FASTSAFETENSORS_CONFIG=f.name):
            loader = AutoLoader(pg, files, device="cpu")
            assert loader.config.set_numa is False and loader.config.source == f.name
            _check(loader, _expected(files), "config file")
    finally:
        os.unlink(f.name)


def seq_local_copyout_filter(pg, files):
    """Each rank yields only what its filter keeps (different tensors per rank)."""
    keep = _rank_local(pg)
    with configured():
        _check(AutoLoader(pg, files, device="cpu", local_copyout_filter=keep), _expected(files, keep),
               "local_copyout_filter")


def seq_stacked_moe_per_expert(pg, files):
    """rtp-llm's full capability tier: the stacked tensor yielded per expert, filtered per rank."""
    keyword = _stacked_keyword()
    assert keyword == "stacked_moe_tensors"
    assert "local_copyout_filter" in inspect.signature(AutoLoader.__init__).parameters
    keep = _rank_local(pg)
    with configured():
        loader = AutoLoader(pg, files, device="cpu", local_copyout_filter=keep, **{keyword: STACKED})
        _check(loader, _expected(files, keep, STACKED), "stacked_moe_tensors")


def seq_dim0_split_templates(pg, files):
    """The older keyword, without a filter: every expert of the stacked tensor on every rank."""
    with configured():
        loader = AutoLoader(pg, files, device="cpu", dim0_split_templates=STACKED)
        _check(loader, _expected(files, None, STACKED), "dim0_split_templates")


test_single_process, test_two_ranks = ranks.client_tests(__name__)


def test_signature_as_rtp_llm_inspects_it():
    params = inspect.signature(AutoLoader.__init__).parameters
    assert list(params)[:4] == ["self", "pg", "hf_weights_files", "device"]
    assert {"local_copyout_filter", "stacked_moe_tensors", "dim0_split_templates"} <= set(params)
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def test_default_path_is_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fastsafetensors.json").write_text(json.dumps({"parallel": {"use_pipeline": True, "queue_size": 3}}))
    with configured():
        config = load_config()
    assert (config.source, config.use_pipeline, config.queue_size) == ("fastsafetensors.json", True, 3)
    assert config.create_parallel_kwargs()["queue_size"] == 3


@pytest.mark.parametrize("env, match", [
    ({"FASTSAFETENSORS_CONFIG_JSON": "{}", "FASTSAFETENSORS_CONFIG": "x.json"}, "both"),
    ({"FASTSAFETENSORS_CONFIG_JSON": "{\"secret\": 1,"}, "not valid JSON"),
    ({"FASTSAFETENSORS_CONFIG_JSON": "[1]"}, "must be a JSON object"),
    ({"FASTSAFETENSORS_CONFIG_JSON": "{\"queue_sise\": 1}"}, "unknown field queue_sise"),
    ({"FASTSAFETENSORS_CONFIG_JSON": "{\"parallel\": {\"queue\": 1}}"}, "unknown field parallel.queue"),
    ({"FASTSAFETENSORS_CONFIG_JSON": "{\"parallel\": {\"queue_size\": \"2\"}}"}, "queue_size must be a int"),
    ({"FASTSAFETENSORS_CONFIG_JSON": "{\"parallel\": {\"max_concurrent_producers\": 2}}"}, "must be 1"),
    ({"FASTSAFETENSORS_CONFIG": "/nonexistent/fst.json"}, "does not exist"),
])
def test_bad_configuration_raises(env, match):
    with configured(**env), pytest.raises(ConfigError, match=match) as info:
        load_config()
    assert isinstance(info.value, (FastSafeTensorsError, ValueError))
    assert "secret" not in str(info.value)  # the text itself is never echoed


@pytest.mark.parametrize("config, match", [
    ({"loader": "3fs"}, "Unknown loader type '3fs': not provided"),
    ({"base": {"copier_type": "dstorage"}}, "copier_type must be one of"),
    ({"base": {"max_thread": 4}}, r"unknown field\(s\) base.max_thread"),
])
def test_loader_section_is_checked(config, match):
    with configured(FASTSAFETENSORS_CONFIG_JSON=json.dumps(config)), pytest.raises(ConfigError, match=match):
        AutoLoader(SingleGroup(), ranks.checkpoint())


def test_other_loaders_sections_are_kept_not_used():
    config = LoaderConfig.from_dict({"3fs": {"mount_point": "/mnt"}, "base": {"copier_type": "nogds"}})
    assert config.get_extension_config("3fs") == {"mount_point": "/mnt"}
    assert config.loader_kwargs()["nogds"] is True


@pytest.mark.parametrize("kwargs, error", [
    ({"stacked_moe_tensors": STACKED, "dim0_split_templates": STACKED}, TypeError),
    ({"stacked_moe_tensors": {"router": "experts.router"}}, ValueError),
    ({"stacked_moe_tensors": {"router": "layers.{i}.experts.{expert_id}"}}, ValueError),
])
def test_bad_split_keywords(kwargs, error):
    with configured(), pytest.raises(error):
        AutoLoader(SingleGroup(), ranks.checkpoint(), **kwargs)


def test_unknown_keyword_is_a_type_error():
    with configured(), pytest.raises(TypeError):
        AutoLoader(SingleGroup(), ranks.checkpoint(), tensor_filter=lambda n: True)


def test_budgets_from_the_configuration():
    """0.5.0's budget fields of the configuration reach ParallelLoader (chunks of at most one expert)."""
    from fastsafetensors.errors import BudgetInfeasibleError

    expert = 256 * 512 * 2
    config = {"max_batch_bytes": expert + 4096, "device_memory_budget": None,
              "use_chunk_budget_as_allocation_size": True}
    with configured(FASTSAFETENSORS_CONFIG_JSON=json.dumps(config)):
        loader = AutoLoader(SingleGroup(), ranks.checkpoint())
        assert len(loader._pipeline._work) > len(ranks.checkpoint())  # the expert files are cut in units
        _check(loader, _expected(ranks.checkpoint()), "budgets")
    with configured(FASTSAFETENSORS_CONFIG_JSON=json.dumps({"max_batch_bytes": 1000})), \
            pytest.raises(BudgetInfeasibleError):
        AutoLoader(SingleGroup(), ranks.checkpoint())
    with configured(FASTSAFETENSORS_CONFIG_JSON=json.dumps({"max_batch_bytes": "1000"})), \
            pytest.raises(ConfigError, match="max_batch_bytes must be a int"):
        load_config()


def test_config_equality_missing_files_and_kwargs_as_upstream(tmp_path, monkeypatch):
    """Upstream's own config tests: where a configuration came from is not part of it, a missing
    file is a FileNotFoundError, and unset budgets add no ParallelLoader keywords."""
    from fastsafetensors.config import LoaderConfig, load_config

    assert LoaderConfig.from_dict({}) == LoaderConfig()
    (tmp_path / "empty.json").write_text("{}")
    assert LoaderConfig.from_file(str(tmp_path / "empty.json")) == LoaderConfig()
    with pytest.raises(FileNotFoundError):
        LoaderConfig.from_file(str(tmp_path / "missing.json"))
    monkeypatch.setenv("FASTSAFETENSORS_CONFIG", str(tmp_path / "missing.json"))
    with pytest.raises(FileNotFoundError):
        load_config()
    assert LoaderConfig(use_pipeline=False).create_parallel_kwargs() == {"queue_size": -1}
    assert LoaderConfig(max_batch_bytes=1 << 20).create_parallel_kwargs() == {"queue_size": -1,
                                                                               "max_batch_bytes": 1 << 20}
