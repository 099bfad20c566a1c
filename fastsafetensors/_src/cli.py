"""The ``fastsafetensors`` command: load, inspect, verify, bench, demo and env.

Every command takes what ``fastsafetensors.load`` takes: a ``.safetensors`` file, several, a
directory, or a ``model.safetensors.index.json``.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .. import __version__, integrity, settings
from . import api
from .engine import MAX_THREADS, check_threads
from ..errors import RemoteUnavailableError, SafeTensorsError, SettingsError, UnsupportedURLError
from .files import PathLike, SafeTensorsFile, check_index, read_file_header, resolve_checkpoint
from ..frameworks import canonical_name
from ..metrics import LoadMetrics
from .plan import plan_load
from .remote.urls import is_url

__all__ = ["main"]

FRAMEWORKS = ("numpy", "torch", "jax")


def _checkpoint(paths: Sequence[str]):
    """One path as given (file, directory or index), several as a list of files."""
    return paths[0] if len(paths) == 1 else list(paths)


def _resolve(paths: Sequence[str]) -> Tuple[List[str], Optional[Dict[str, str]]]:
    url = next((p for p in paths if is_url(p)), None)
    if url is not None:  # else it would be looked for as a local file, and "not found"
        raise UnsupportedURLError(f"{url}: inspect, verify and bench read local files; `fastsafetensors load` "
                                  "takes URLs (docs/remote.md)")
    return resolve_checkpoint(_checkpoint(paths))


# ---------------------------------------------------------------- load


def _progress(args: argparse.Namespace) -> bool:
    """A progress bar only where a person watches: not with --quiet, not into a log or a pipe."""
    return not args.quiet and sys.stderr.isatty()


def cmd_load(args: argparse.Namespace) -> int:
    m = LoadMetrics()
    tensors = api.load(_checkpoint(args.path), framework=args.framework, threads=args.threads,
                       direct_io=args.direct_io or None, progress=_progress(args), metrics=m)
    print(f"loaded into {args.framework}: {m.summary()}")
    del tensors
    return 0


# ---------------------------------------------------------------- inspect

# Control characters (C0, DEL, C1), line separators and bidirectional overrides: tensor names,
# metadata and file names come from the checkpoint, and printed raw they could start new lines
# ("OK ..."), move the cursor or recolour the terminal.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escaped(text: str) -> str:
    """``text`` with its control characters escaped (\\n, \\x1b, \\u202e)."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def _say(text: str, **print_args) -> None:
    """Prints one line of output, escaped."""
    print(_escaped(text), **print_args)


def _print_header(f: SafeTensorsFile) -> None:
    h = f.header
    _say(f"{f.path}: {len(f.infos)} tensors, {f.size:,} bytes "
          f"(header {h.header_length:,} bytes, data from byte {h.data_start:,})")
    if f.metadata:
        _say("  metadata: " + ", ".join(f"{k}={v}" for k, v in f.metadata.items()))
    rows = [(t.name, t.dtype, "[" + ", ".join(map(str, t.shape)) + "]", f"{t.nbytes:,}", f"[{t.begin}, {t.end})")
            for t in f.infos]
    _print_columns(("name", "dtype", "shape", "bytes", "offsets"), rows, right=(3,))


def _print_columns(heads: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> None:
    """An indented table, columns as wide as their widest cell (those in ``right`` right-aligned)."""
    rows = [[_escaped(c) for c in r] for r in rows]  # escaped before measuring, so columns stay aligned
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(heads)]
    for row in [heads, *rows]:
        _say(("  " + "  ".join(c.rjust(w) if i in right else c.ljust(w)
                                for i, (c, w) in enumerate(zip(row, widths)))).rstrip())


def cmd_inspect(args: argparse.Namespace) -> int:
    paths, weight_map = _resolve(args.path)
    if weight_map is not None:
        print(f"index: {len(weight_map)} tensors in {len(paths)} file(s)")
    for i, p in enumerate(paths):
        if i:
            print()
        _print_header(read_file_header(p))
    return 0


# ---------------------------------------------------------------- verify


def _fail(what: str, exc: BaseException) -> None:
    _say(f"FAIL  {what}: {type(exc).__name__}: {exc}")


# verify reads a file this many bytes at a time, so a large shard needs no more memory than this.
VERIFY_BATCH_BYTES = 512 << 20


def _verify_file(path: str) -> SafeTensorsFile:
    """Validates the header, then reads every tensor byte (the tensors cover the data exactly)."""
    f = read_file_header(path)
    batch: List[str] = []
    size = 0
    for i, t in enumerate(f.infos):
        batch.append(t.name)
        size += t.nbytes
        if size >= VERIFY_BATCH_BYTES or i == len(f.infos) - 1:
            api.load_files([f], "numpy", names=batch, raw=True, progress=False)
            batch, size = [], 0
    return f


def _split_sha256(args: argparse.Namespace) -> Tuple[List[str], Optional[List[str]]]:
    """The paths and the ``--sha256`` values. ``--sha256`` takes any number of values, so paths written
    after it land among them: a value naming an existing file or directory is a path."""
    if args.sha256 is None:
        return args.path, None
    moved = [v for v in args.sha256 if os.path.exists(v)]
    return args.path + moved, [v for v in args.sha256 if v not in moved]


def _given_digests(values: List[str], paths: List[str]) -> Dict[PathLike, str]:
    """``--sha256`` values as ``{FILE: HEX}``: FILE=HEX pairs, or one HEX when a single file is verified."""
    out: Dict[PathLike, str] = {}
    for v in values:
        path, sep, digest = v.rpartition("=")
        if not sep and len(paths) != 1:
            raise SystemExit("fastsafetensors verify: --sha256 HEX names one file's digest; give FILE=HEX "
                             f"for each of the {len(paths)} files")
        if not integrity.is_sha256(digest):
            raise SystemExit(f"fastsafetensors verify: --sha256 {v}: {digest!r} is not a SHA-256 digest "
                             "(64 hex digits)")
        key = path if sep else paths[0]
        if out.get(key, digest).lower() != digest.lower():  # the one kept would hide the other
            raise SystemExit(f"fastsafetensors verify: --sha256 gives {key} two different digests")
        out[key] = digest
    return out


def cmd_verify(args: argparse.Namespace) -> int:
    path_args, values = _split_sha256(args)
    if not path_args:
        raise SystemExit("fastsafetensors verify: no PATH given (a file, several, a directory or an index)")
    paths, weight_map = _resolve(path_args)
    expected = _given_digests(values, paths) if values is not None else None
    good: List[SafeTensorsFile] = []
    failed = 0
    for key in integrity.unmatched_keys(paths, expected or {}):
        failed += 1
        _say(f"FAIL  --sha256 {key}=...: {key} is none of the files verified, so nothing was compared with it")
    for p in paths:
        try:
            want = integrity.expected_digest(p, expected) if expected is not None else None
            f = _verify_file(p)
            digest = integrity.verify_file(p, want) if want is not None else None
        except (SafeTensorsError, OSError) as exc:
            failed += 1
            _fail(p, exc)
            continue
        good.append(f)
        _say(f"OK    {p}: {len(f.infos)} tensors, {f.data_bytes:,} data bytes read"
              + (f", sha256 {digest}" if digest else ""))
    if not failed:
        try:
            if weight_map is not None:
                check_index(good, weight_map)
                print(f"OK    index: {len(weight_map)} tensors, each in the file it names")
            plan_load(good)  # a tensor name in two files is an error
        except SafeTensorsError as exc:
            failed += 1
            _fail("checkpoint", exc)
    if failed:
        print(f"{failed} problem(s) found")
        return 1
    print(f"all {len(paths)} file(s) OK")
    return 0


# ---------------------------------------------------------------- bench


def cmd_bench(args: argparse.Namespace) -> int:
    import safetensors  # noqa: F401  (the reference every case is checked against: missing, main says so)

    from . import bench as _bench

    paths, _ = _resolve(args.path)
    nbytes = sum(read_file_header(p).data_bytes for p in paths)
    wanted = ["fastsafetensors numpy", "fastsafetensors torch", "safetensors numpy",
              "safetensors torch (mmap, pages touched)"]
    cases = _bench.cases(wanted)
    missing = [name for name in wanted if name not in {c.name for c in cases}]
    if missing:  # their framework is not installed
        print(f"skipped (torch not installed): {', '.join(missing)}", flush=True)
    print(f"{len(paths)} file(s), {nbytes / 1e9:.3f} GB; {args.repeats} loads per case, in alternating order, "
          "page cache as it is (run twice to measure a warm one)", flush=True)
    reference = _bench.reference_digests(paths)
    seconds = _bench.run_alternating(cases, paths, args.repeats, reference)
    ours = _bench.median(seconds[cases[0].name])
    rows = []
    for c in cases:
        t = _bench.median(seconds[c.name])
        rows.append((c.name, f"{t:.3f}", f"{nbytes / t / 1e9:.2f}", f"{ours / t:.2f}x"))
    print(_bench.markdown_table(("case", "median s", "GB/s", "speed vs ours"), rows))
    print("every case returned the same bytes as safetensors")
    return 0


# ---------------------------------------------------------------- demo


def _check_demo(tensors: Dict[str, object], size_bytes: int) -> int:
    """Compares every loaded tensor with what the demo wrote (regenerated); returns the count."""
    from .bench import flat_bytes
    from .synthetic import expected_tensors

    n = 0
    for spec, want in expected_tensors(size_bytes):
        got = tensors[spec.name]
        if not (flat_bytes(got) == flat_bytes(want)).all():
            raise AssertionError(f"tensor {spec.name} differs from what was written")
        n += 1
    if n != len(tensors):
        raise AssertionError(f"loaded {len(tensors)} tensors, wrote {n}")
    return n


def cmd_demo(args: argparse.Namespace) -> int:
    from .synthetic import INDEX_NAME, write_checkpoint

    size = int(args.size_mb * 1e6)
    directory = args.keep or tempfile.mkdtemp(prefix="fastsafetensors-demo-")
    try:
        print(f"writing a Llama-shaped checkpoint of about {args.size_mb:g} MB ({args.shards} shards + index) "
              f"to {directory}", flush=True)
        start = time.perf_counter()
        write_checkpoint(directory, size, args.shards)
        print(f"  written in {time.perf_counter() - start:.1f} s; loading it through {INDEX_NAME} ...", flush=True)
        m = LoadMetrics()
        tensors = api.load(os.path.join(directory, INDEX_NAME), framework=args.framework, progress=_progress(args),
                           metrics=m)
        print(f"loaded into {args.framework}: {m.summary()}")
        print("  (from a warm page cache: the files were just written)")
        for name in list(tensors)[:3] + list(tensors)[-1:]:
            t = tensors[name]
            print(f"  {name}: {args.framework} {t.dtype} {tuple(t.shape)}")
        print(f"checked: all {_check_demo(tensors, size)} tensors equal what was written")
    finally:
        if args.keep:
            print(f"kept {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)
    return 0


# ---------------------------------------------------------------- env


def cmd_env(args: argparse.Namespace) -> int:
    rows = [(e.name, "unset" if e.value is None else str(e.value), e.source, e.help) for e in settings.effective()]
    _print_columns(("variable", "value", "source", "effect"), rows)
    return 0


# ---------------------------------------------------------------- main


def _framework(name: str) -> str:
    try:
        fw = canonical_name(name)
    except ValueError:
        fw = None
    if fw not in FRAMEWORKS:
        raise argparse.ArgumentTypeError(f"{name!r}: choose one of {', '.join(FRAMEWORKS)}")
    return fw


def _number(text: str, parse: Callable[[str], Any], usable: Callable[[Any], bool], what: str) -> Any:
    """``parse(text)`` if it parses and is usable, else a usage error saying what was expected."""
    try:
        value = parse(text)
    except ValueError:
        value = None
    if value is None or not usable(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def _positive(text: str) -> int:
    return _number(text, int, lambda n: n >= 1, "a positive whole number")


def _megabytes(text: str) -> float:
    return _number(text, float, lambda mb: 0 < mb < math.inf,  # also refuses nan
                   "a positive number of megabytes")


def _threads(text: str) -> int:
    try:
        return check_threads(_positive(text), "--threads")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# What to install for a module a command needs: the CLI's own extras where there is one.
_INSTALL = {"safetensors": "pip install 'fastsafetensors[bench]'",
            "torch": "pip install torch (a CPU build on machines without a GPU)", "jax": "pip install jax"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastsafetensors", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"fastsafetensors {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    path_help = "a .safetensors file, several, a directory, or a model.safetensors.index.json"

    s = sub.add_parser("load", help="load a checkpoint and report how fast")
    s.add_argument("path", nargs="+", help=path_help)
    s.add_argument("--framework", type=_framework, default="numpy", help="numpy (default), torch or jax")
    s.add_argument("--threads", type=_threads, default=None,
                   help=f"reader threads, 1 to {MAX_THREADS} (default: 2 per core, 4 to 16)")
    s.add_argument("--direct-io", action="store_true", help="read with O_DIRECT, bypassing the page cache")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar (there is none when stderr is "
                                                                "not a terminal)")
    s.set_defaults(func=cmd_load)

    s = sub.add_parser("inspect", help="print each file's tensors (name, dtype, shape, bytes, offsets) and metadata")
    s.add_argument("path", nargs="+", help=path_help)
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("verify", help="validate every file and read every byte; exit 1 on a bad one")
    s.add_argument("path", nargs="*", help=path_help)
    s.add_argument("--sha256", nargs="*", metavar="HEX|FILE=HEX",
                   help="also hash each file and compare it with the digest given (HEX for a single file, "
                        "FILE=HEX for each of several), else, in a Hugging Face cache, with the blob name "
                        "(its own, or the one its snapshot link points to); a file with nothing to compare "
                        "with fails. Values naming existing files or directories are taken as paths")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("bench", help="time fastsafetensors against safetensors on a checkpoint")
    s.add_argument("path", nargs="+", help=path_help)
    s.add_argument("--repeats", type=_positive, default=5, help="loads per case (default 5)")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("demo", help="write a synthetic Llama-shaped checkpoint, load it, report")
    s.add_argument("--size-mb", type=_megabytes, default=300, help="checkpoint size in MB (default 300)")
    s.add_argument("--shards", type=_positive, default=3, help="number of shard files (default 3)")
    s.add_argument("--framework", type=_framework, default="numpy", help="numpy (default), torch or jax")
    s.add_argument("--keep", metavar="DIR", default=None, help="write into DIR and keep it")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("env", help="print every FASTSAFETENSORS_* variable's value in effect; exit 1 on a "
                                   "malformed one")
    s.set_defaults(func=cmd_env)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (SafeTensorsError, SettingsError, OSError, UnsupportedURLError, RemoteUnavailableError) as exc:
        _say(f"fastsafetensors {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        if exc.name not in _INSTALL:
            raise
        print(f"fastsafetensors {args.command}: needs {exc.name}, which is not installed: {_INSTALL[exc.name]}",
              file=sys.stderr)
        return 1
