"""The object-store client: obstore stores built per bucket (or server), imported only for URLs."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any, Dict, Mapping, Optional, Tuple

from ... import settings
from ...errors import ArgumentTypeError, RemoteUnavailableError, UnsupportedURLError
from .urls import ObjectURL

__all__ = ["obstore_module", "store_for", "check_storage_options", "env_variable"]

# storage_options keys that configure obstore's HTTP client rather than the store itself.
_CLIENT_KEYS = frozenset({"allow_http", "allow_invalid_certificates", "connect_timeout", "default_content_type",
                          "default_headers", "http1_only", "http2_only", "pool_idle_timeout",
                          "pool_max_idle_per_host", "proxy_url", "proxy_ca_certificate", "proxy_excludes",
                          "timeout", "user_agent"})
# The prefix of each store's environment variables (object_store's from_env). Passing client options
# replaces the ones the store read from its environment, so those are read here too.
_ENV_PREFIX = {"s3": "AWS_", "gs": "GOOGLE_", "az": "AZURE_"}
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
        raise ArgumentTypeError(f"storage_options must be a mapping of str keys, not {type(storage_options).__name__}")
    return dict(storage_options)


def env_variable(scheme: str, key: str) -> Optional[str]:
    """The environment variable the ``scheme``'s store reads client option ``key`` from (AWS_ALLOW_HTTP), if any."""
    prefix = _ENV_PREFIX.get(scheme)
    return prefix + key.upper() if prefix else None


def _env_client_options(scheme: str) -> Dict[str, str]:
    """The client options set in the store's environment (AWS_ALLOW_HTTP=true, AWS_PROXY_URL, ...)."""
    found = {k: os.environ.get(env_variable(scheme, k) or "") for k in _CLIENT_KEYS}
    return {k: v for k, v in found.items() if v is not None}


def _client_options(url: ObjectURL, options: Dict[str, Any]) -> Dict[str, Any]:
    """The HTTP client's options: FASTSAFETENSORS_REMOTE_TIMEOUT's timeouts, then the store's
    environment, then storage_options (each overrides the ones before)."""
    timeout = settings.get("FASTSAFETENSORS_REMOTE_TIMEOUT")
    out: Dict[str, Any] = {"timeout": f"{timeout}s", "connect_timeout": f"{min(timeout, 10.0)}s"} if timeout else {}
    if url.scheme == "http":  # parse_url let it through: a loopback server
        out["allow_http"] = True
    out.update(_env_client_options(url.scheme))
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
        env = sorted(v for k in _env_client_options(url.scheme) if (v := env_variable(url.scheme, k)))
        raise UnsupportedURLError(f"{url.root}: the {url.scheme}:// store refused its configuration "
                                  f"({type(exc).__name__}); storage_options keys given: {sorted(options)}"
                                  + (f"; client options from the environment: {env}" if env else "")) from None


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
