"""The machinery behind :mod:`fastsafetensors.jax` (private: its names may change at any time).

* ``placement``: the caller's placement -> one :class:`~.placement.Target` per tensor, checked.
* ``shard_plan``: which bytes each host reads for its shards, and reading and cutting them.
* ``strategies``: getting the host bytes onto the devices (per_device, scatter), dtype conversion.
"""
