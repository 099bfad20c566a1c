"""Checkpoint URLs: which strings are URLs, and what scheme, bucket and key each names."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ...errors import UnsupportedURLError

__all__ = ["SCHEMES", "ObjectURL", "is_url", "parse_url", "shown_url"]

# s3/gs/az: buckets (containers); https: any server that honours Range; http: loopback only (tests).
SCHEMES = ("s3", "gs", "az", "https", "http")


def is_url(value: Any) -> bool:
    """Whether a checkpoint argument is a URL (``scheme://...``) rather than a local path."""
    return isinstance(value, str) and "://" in value


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ObjectURL:
    """A parsed URL: ``root`` is what a store is built for (``s3://bucket``, ``https://host:port``),
    ``key`` the object's path inside it (no leading slash; may end with ``/`` for a prefix)."""

    url: str
    scheme: str
    root: str
    key: str

    def child(self, key: str) -> "ObjectURL":
        """The object ``key`` (a full key) in the same bucket or server."""
        return ObjectURL(f"{self.root}/{key}", self.scheme, self.root, key)

    @property
    def name(self) -> str:
        return os.path.basename(self.key.rstrip("/"))


def parse_url(url: str) -> ObjectURL:
    """Splits ``url``; an unknown scheme, a missing bucket or host, or http:// off the loopback
    interface raises UnsupportedURLError naming the URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise UnsupportedURLError(f"{shown_url(url)}: unsupported URL scheme {scheme!r}: use one of "
                                  + ", ".join(f"{s}://" for s in SCHEMES) + " or a local path")
    if not parts.hostname:
        raise UnsupportedURLError(f"{shown_url(url)}: no bucket or host in this URL")
    if parts.username or parts.password:
        raise UnsupportedURLError(f"{shown_url(url)}: credentials in a URL are refused (they would end up in "
                                  "error messages and logs): pass them as storage_options= or the "
                                  "store's environment variables")
    if parts.query or parts.fragment:
        raise UnsupportedURLError(f"{shown_url(url)}: a URL with a query or fragment (a presigned URL?) is not "
                                  "supported: give the object's plain URL")
    if scheme == "http" and not _loopback(parts.hostname):
        raise UnsupportedURLError(f"{url}: http:// is only for servers on the loopback interface (tests); "
                                  "use https://")
    root = f"{scheme}://{parts.netloc}"
    return ObjectURL(url, scheme, root, parts.path.lstrip("/"))


def shown_url(url: str) -> str:
    """The URL without anything after a user-info part, query or fragment, which may hold secrets."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}"
