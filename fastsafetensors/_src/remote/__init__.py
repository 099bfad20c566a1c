"""Checkpoints in object storage: URLs (s3://, gs://, az://, https://) through the same data path as
files (URL -> header -> read plan -> ranged GETs into the engine's host buffers -> DLPack -> arrays).

``urls`` parses and checks URLs (no client needed); ``store`` builds the object-store client
(obstore, imported only when a URL is loaded); ``requests`` runs one request with bounded retries and
typed errors; ``objects`` reads headers and resolves prefixes and indexes; ``reader`` fetches a read
plan's ranges into host buffers. See docs/remote.md.
"""

from .urls import is_url

__all__ = ["is_url"]
