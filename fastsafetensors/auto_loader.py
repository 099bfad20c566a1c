"""AutoLoader (upstream's ``fastsafetensors.auto_loader``): a ParallelLoader set up from the
configuration (``fastsafetensors.config``), as rtp-llm and other serving stacks call it.

Two keyword families rtp-llm looks for in the signature before passing them:

- ``local_copyout_filter(name) -> bool``: this rank yields only the tensors it accepts (applied
  to the names yielded, after any split below). Here it is a ``tensor_filter`` of ParallelLoader:
  a rank reads what it keeps and nothing else; ranks keeping different tensors read them straight
  from the files, so every rank must be able to open every file (else ``ShardRequestError``).
- ``stacked_moe_tensors`` (or its older name ``dim0_split_templates``): ``{stacked name: template}``.
  A stacked tensor (experts along dim 0) is yielded as one tensor per expert,
  ``template.format(expert_id=i)`` for its row ``i`` (a view, no copy), instead of whole.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Generator, Mapping, Optional, Sequence, Tuple

from .config import LoaderConfig, load_config
from .errors import ArgumentTypeError, InvalidArgumentError, ShardRequestError
from ._src.files import PathLike
from .parallel_loader import ParallelLoader

__all__ = ["AutoLoader"]

logger = logging.getLogger("fastsafetensors")

_EXPERT_FIELD = "{expert_id}"


def _split_templates(stacked_moe_tensors: Optional[Mapping[str, str]],
                     dim0_split_templates: Optional[Mapping[str, str]]) -> Dict[str, str]:
    if stacked_moe_tensors is not None and dim0_split_templates is not None:
        raise ArgumentTypeError("AutoLoader: pass stacked_moe_tensors or its older name dim0_split_templates, not both")
    templates = dict(stacked_moe_tensors if stacked_moe_tensors is not None else dim0_split_templates or {})
    for name, template in templates.items():
        try:
            usable = isinstance(template, str) and _EXPERT_FIELD in template and template.format(expert_id=0)
        except (KeyError, IndexError, ValueError):  # other fields, or broken braces
            usable = False
        if not usable:
            raise InvalidArgumentError(f"AutoLoader: the split template of `{name}` must be a string whose only field is "
                             f"{_EXPERT_FIELD}, got {template!r}")
    return templates


class AutoLoader:
    """Yields ``(name, tensor)`` for every tensor of ``hf_weights_files`` (a ParallelLoader)
    configured by ``load_config()``; ``iterate_weights()`` once, then ``close()`` (idempotent)."""

    def __init__(self, pg: Optional[Any], hf_weights_files: Sequence[PathLike], device: str = "cpu",
                 local_copyout_filter: Optional[Callable[[str], bool]] = None,
                 stacked_moe_tensors: Optional[Mapping[str, str]] = None,
                 dim0_split_templates: Optional[Mapping[str, str]] = None):
        self._config = load_config()
        self._templates = _split_templates(stacked_moe_tensors, dim0_split_templates)
        self._keep = local_copyout_filter
        kwargs = {**self._config.loader_kwargs(), **self._config.create_parallel_kwargs()}
        logger.info("AutoLoader: configuration from %s: loader=%s device=%s files=%d %s", self._config.source,
                    self._config.loader, device, len(hf_weights_files), kwargs)
        self._pipeline = ParallelLoader(pg, hf_weights_files, device=device, tensor_filter=self._read_filter(),
                                        **kwargs)

    def _read_filter(self) -> Optional[Callable[[str], bool]]:
        """What this rank reads: the tensors it yields, and every stacked tensor (whether any of its
        experts is kept shows only once its rows are known)."""
        keep = self._keep
        if keep is None:
            return None
        templates = self._templates
        return lambda name: name in templates or bool(keep(name))

    @property
    def config(self) -> LoaderConfig:
        return self._config

    def iterate_weights(self) -> Generator[Tuple[str, Any], None, None]:
        for name, tensor in self._pipeline.iterate_weights():
            template = self._templates.get(name)
            if template is None:
                yield name, tensor
                continue
            if tensor.ndim == 0:
                raise ShardRequestError(f"AutoLoader: `{name}` has no dim 0 to split into experts "
                                        "(stacked_moe_tensors)", tensor=name)
            for i in range(tensor.shape[0]):
                expert = template.format(expert_id=i)
                if self._keep is None or self._keep(expert):
                    yield expert, tensor[i]

    def close(self) -> None:
        self._pipeline.close()
