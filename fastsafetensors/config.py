"""AutoLoader's configuration (upstream's ``fastsafetensors.config``): ``LoaderConfig`` and ``load_config``.

Where it comes from, first found wins: ``FASTSAFETENSORS_CONFIG_JSON`` (the JSON itself), the file
``FASTSAFETENSORS_CONFIG`` names, ``./fastsafetensors.json``, else the defaults. Both variables
set at once is an error (which one was meant is not ours to guess).

The JSON is upstream's: top-level fields, the groups ``parallel`` and ``debug`` (their fields
flattened), and one section per loader kind (``base``: ``copier_type`` ``gds``/``nogds``,
``bbuf_size_kb``, ``max_threads``). Unlike upstream, which ignores names it does not know, an
unknown field raises :class:`~fastsafetensors.errors.ConfigError` naming it: a misspelt setting
never passes unnoticed. Sections of other loader kinds are kept and only checked when selected.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, fields
from typing import Any, Dict, Optional

from . import settings
from .errors import ConfigError, ConfigFileNotFoundError

__all__ = ["LoaderConfig", "load_config", "CONFIG_ENV_VAR", "CONFIG_JSON_ENV_VAR", "DEFAULT_CONFIG_PATH"]

logger = logging.getLogger("fastsafetensors")

CONFIG_ENV_VAR = "FASTSAFETENSORS_CONFIG"
CONFIG_JSON_ENV_VAR = "FASTSAFETENSORS_CONFIG_JSON"
DEFAULT_CONFIG_PATH = "fastsafetensors.json"

_GROUPS = ("parallel", "debug")
# What each loader kind's section accepts; "base" is the only kind this package provides.
_SECTION_FIELDS = {"base": ("copier_type", "bbuf_size_kb", "max_threads")}
_COPIER_TYPES = ("gds", "nogds")
# Byte counts that may be null (no budget).
_BYTE_FIELDS = ("max_batch_bytes", "device_memory_budget")
# Fields of every loader that a section may repeat; upstream drops them from the section.
_COMMON_FIELDS = ("framework", "debug_log", "set_numa", "disable_cache")


@dataclass
class LoaderConfig:
    """AutoLoader's settings; ``_extensions`` holds the per-loader sections (``get_extension_config``)."""

    loader: str = "base"
    framework: str = "pytorch"
    debug_log: bool = False
    set_numa: bool = True
    disable_cache: bool = True

    use_pipeline: bool = False
    max_concurrent_producers: int = 1
    queue_size: int = 0
    use_tqdm_on_load: bool = True

    # Memory budgets, passed to ParallelLoader (docs/torch.md, "Memory budgets").
    max_batch_bytes: Optional[int] = None
    use_chunk_budget_as_allocation_size: bool = False
    device_memory_budget: Optional[int] = None

    _extensions: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    source: str = field(default="defaults", compare=False)  # where it was read from, not a setting

    def __post_init__(self) -> None:
        # As upstream: batches are consumed in order on every rank, so one producer feeds them.
        if self.max_concurrent_producers != 1:
            raise ConfigError(f"{self.source}: max_concurrent_producers must be 1, got {self.max_concurrent_producers}",
                              source=self.source)

    @classmethod
    def _field_names(cls) -> set:
        return {f.name for f in fields(cls) if not f.name.startswith("_") and f.name != "source"}

    @classmethod
    def from_dict(cls, data: Dict[str, Any], source: str = "a dict") -> "LoaderConfig":
        """``parallel``/``debug`` groups flattened, other objects kept as loader sections."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: the configuration must be a JSON object, got {type(data).__name__}",
                              source=source)
        known, flat, sections = cls._field_names(), {}, {}
        for key, value in data.items():
            if key in _GROUPS and isinstance(value, dict):
                for sub, sub_value in value.items():
                    if sub not in known:
                        raise ConfigError(f"{source}: unknown field {key}.{sub}", source=source)
                    flat[sub] = sub_value
            elif isinstance(value, dict):
                sections[key] = dict(value)
            elif key in known:
                flat[key] = value
            else:
                raise ConfigError(f"{source}: unknown field {key}", source=source)
        defaults = cls()
        for key, value in flat.items():
            want = type(getattr(defaults, key))
            if key in _BYTE_FIELDS:
                want = int if value is not None else want
            if type(value) is not want:  # exact: a bool is no int here, an int no bool
                raise ConfigError(f"{source}: {key} must be a {want.__name__}, got {value!r}", source=source)
        return cls(**flat, _extensions=sections, source=source)

    @classmethod
    def from_file(cls, path: str) -> "LoaderConfig":
        try:
            with open(path) as f:
                text = f.read()
        except FileNotFoundError:
            raise ConfigFileNotFoundError(f"{path}: the configuration file does not exist", source=path) from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the configuration file: {exc.strerror}", source=path) from None
        return cls.from_json(text, path)

    @classmethod
    def from_json(cls, text: str, source: str) -> "LoaderConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:  # its position only: the text may hold anything
            raise ConfigError(f"{source}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
                              source=source) from None
        return cls.from_dict(data, source)

    def get_extension_config(self, name: str) -> Dict[str, Any]:
        """A copy of loader ``name``'s section without the fields every loader shares."""
        return {k: v for k, v in self._extensions.get(name, {}).items() if k not in _COMMON_FIELDS}

    def loader_kwargs(self) -> Dict[str, Any]:
        """The keywords of the selected loader kind, checked: ``copier_type`` becomes ``nogds``."""
        if self.loader not in _SECTION_FIELDS:
            raise ConfigError(f"{self.source}: Unknown loader type {self.loader!r}: not provided by this package; "
                              f"available: {sorted(_SECTION_FIELDS)}", source=self.source)
        section = self.get_extension_config(self.loader)
        unknown = sorted(set(section) - set(_SECTION_FIELDS[self.loader]))
        if unknown:
            raise ConfigError(f"{self.source}: unknown field(s) {', '.join(f'{self.loader}.{k}' for k in unknown)}",
                              source=self.source)
        copier = section.pop("copier_type", "gds")
        if copier not in _COPIER_TYPES:
            raise ConfigError(f"{self.source}: {self.loader}.copier_type must be one of {list(_COPIER_TYPES)}, "
                              f"got {copier!r}", source=self.source)
        return {"framework": self.framework, "debug_log": self.debug_log, "set_numa": self.set_numa,
                "disable_cache": self.disable_cache, "nogds": copier != "gds", **section}

    def create_parallel_kwargs(self) -> Dict[str, Any]:
        """ParallelLoader's pipeline and budget keywords: without ``use_pipeline``, batches are read serially."""
        budgets = {k: v for k, v in (("max_batch_bytes", self.max_batch_bytes),
                                     ("device_memory_budget", self.device_memory_budget),
                                     ("use_chunk_budget_as_allocation_size",
                                      self.use_chunk_budget_as_allocation_size or None)) if v is not None}
        if not self.use_pipeline:
            return {"queue_size": -1, **budgets}
        return {"max_concurrent_producers": self.max_concurrent_producers, "queue_size": self.queue_size,
                "use_tqdm_on_load": self.use_tqdm_on_load, **budgets}


def load_config() -> LoaderConfig:
    """The configuration in effect now (see the module's docstring for the order)."""
    text: Optional[str] = settings.get(CONFIG_JSON_ENV_VAR)
    path: Optional[str] = settings.get(CONFIG_ENV_VAR)
    if text is not None and path is not None:
        raise ConfigError(f"both {CONFIG_JSON_ENV_VAR} and {CONFIG_ENV_VAR} are set; set one", source=CONFIG_ENV_VAR)
    if text is not None:
        return LoaderConfig.from_json(text, CONFIG_JSON_ENV_VAR)
    if path is not None:
        if not os.path.exists(path):
            raise ConfigFileNotFoundError(f"{path}: the configuration file {CONFIG_ENV_VAR} names does not exist",
                                          source=path)
        return LoaderConfig.from_file(path)
    if os.path.isfile(DEFAULT_CONFIG_PATH):
        logger.info("fastsafetensors: configuration from ./%s", DEFAULT_CONFIG_PATH)
        return LoaderConfig.from_file(DEFAULT_CONFIG_PATH)
    return LoaderConfig()
