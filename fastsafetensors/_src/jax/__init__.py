"""The machinery behind :mod:`fastsafetensors.jax` (private: its names may change at any time).

* ``placement``: the caller's placement -> one :class:`~.placement.Target` per tensor, checked.
* ``shard_plan``: which bytes each host reads for its shards, and reading and cutting them.
* ``transforms``: layout transforms (rename, transpose, reshape, concat, stack, slice, astype) and
  which source boxes make up a target box; ``transform_reads``: loading through them.
* ``strategies``: getting the host bytes onto the devices (per_device, scatter), dtype conversion.
"""
