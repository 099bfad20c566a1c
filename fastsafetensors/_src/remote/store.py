"""The object-store client: obstore stores built per bucket (or server), imported only for URLs."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Dict, Mapping, Optional, Tuple

from ... import settings
from ...errors import RemoteUnavailableError, UnsupportedURLError
from .urls import ObjectURL

__all__ = ["obstore_module", "store_for", "check_storage_options"]

# storage_options keys that configure obstore's HTTP client rather than the store itself.
_CLIENT_KEYS = frozenset({"allow_http", "allow_invalid_certificates", "connect_timeout", "default_content_type",
                          "default_headers", "http1_only", "http2_only", "pool_idle_timeout",
                          "pool_max_idle_per_host", "proxy_url", "proxy_ca_certificate", "proxy_excludes",
                          "timeout", "user_agent"})
# Stores are kept between loads (their connection pools and credentials with them), a few at most.
_CACHED_STORES = 8
_lock = threading.Lock()
_stores: "OrderedDict[Tuple[str, Tuple], Any]" = OrderedDict()


def obstore_module():
    """obstore, or RemoteUnavailableError saying how to install it."""
    try:
        import obstore
    except ImportError:
        raise RemoteUnavailableError("loading from a URL needs the object-store client obstore: "
                                     "pip install fastsafetensors[remote]") from None
    return obstore


def check_storage_options(storage_options: Any) -> Dict[str, Any]:
    """``storage_options`` as a dict of str keys (None: empty); anything else raises TypeError."""
    if storage_options is None:
        return {}
    if not isinstance(storage_options, Mapping) or not all(isinstance(k, str) for k in storage_options):
        raise TypeError(f"storage_options must be a mapping of str keys, not {type(storage_options).__name__}")
    return dict(storage_options)


def _client_options(url: ObjectURL, options: Dict[str, Any]) -> Dict[str, Any]:
    timeout = settings.get("FASTSAFETENSORS_REMOTE_TIMEOUT")
    out: Dict[str, Any] = {"timeout": f"{timeout}s", "connect_timeout": f"{min(timeout, 10.0)}s"} if timeout else {}
    if url.scheme == "http":  # parse_url let it through: a loopback server
        out["allow_http"] = True
    out.update({k: v for k, v in options.items() if k in _CLIENT_KEYS})
    out.update(options.get("client_options") or {})
    return out


def _build(url: ObjectURL, options: Dict[str, Any], client_options: Dict[str, Any]) -> Any:
    obstore = obstore_module()
    from obstore.store import from_url

    config = {k: v for k, v in options.items() if k not in _CLIENT_KEYS and k != "client_options"}
    try:
        # Retries are ours (requests.py): bounded, with backoff, and counted in LoadMetrics.
        # `config` is the caller's storage_options: obstore checks its keys, mypy cannot.
        return from_url(url.root, client_options=client_options, retry_config={"max_retries": 0},  # type: ignore[call-overload]
                        **config)
    except obstore.exceptions.BaseError as exc:
        # obstore's message may quote a value (a key); only the option names are shown.
        raise UnsupportedURLError(f"{url.root}: the {url.scheme}:// store refused its configuration "
                                  f"({type(exc).__name__}); storage_options keys given: {sorted(options)}") from None


def store_for(url: ObjectURL, storage_options: Optional[Mapping[str, Any]] = None) -> Any:
    """The store of ``url``'s bucket or server with these options (and the timeout in effect), built
    once and reused."""
    options = check_storage_options(storage_options)
    client_options = _client_options(url, options)
    key = (url.root, tuple(sorted((k, repr(v)) for k, v in {**options, **client_options}.items())))
    with _lock:
        store = _stores.get(key)
        if store is not None:
            _stores.move_to_end(key)
            return store
    store = _build(url, options, client_options)
    with _lock:
        _stores[key] = store
        while len(_stores) > _CACHED_STORES:
            _stores.popitem(last=False)
    return store
