"""FASTSAFETENSORS_* variables: one declaration each (fastsafetensors/settings.py), one set of parsing
rules shared by Python and the engine, typed errors naming the variable, and `fastsafetensors env`."""

import logging
import os
import re
import subprocess
import sys

import pytest

import fastsafetensors
from fastsafetensors import _cpp, settings
from fastsafetensors._src.api import _direct_io_default
from fastsafetensors._src.cli import main
from fastsafetensors._src.device_engine import gds_mode, numa_enabled
from fastsafetensors._src.engine import default_threads
from fastsafetensors.errors import SettingsError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(fastsafetensors.__file__)))
NAME = "FASTSAFETENSORS_X"

BOOLS = ["1", "0", "true", "FALSE", " Yes ", "no\t", "ON", "oFf", "", " ", "2", "-1", "y", "t", "truee", "o n",
         "always", "１", "nan"]
UINTS = ["0", "7", "007", " 42 ", "1024", "1025", "18446744073709551615", "18446744073709551616",
         "99999999999999999999999", "0" * 30 + "5", "-1", "+1", "1.0", "1e3", "0x10", "1_000", "abc", "", " ", "٣"]
FLOATS = ["0", "5", "5.", ".5", "2.5e3", "1E2", " 1e-3 ", "1e-400", "1000000", "1000000.0000001", "1e400", "nan",
          "inf", "-1", "+1", "-0", ".", "e3", "1e", "1e+", "1,5", "0x1p3", "1_0", "", "٣"]
CHOICES = ["auto", " DIRECT ", "Buffered", "off", "", "of", "auto,direct", "autö"]


def _outcome(parse, *args):
    try:
        return "ok", parse(*args)
    except SettingsError as exc:
        assert exc.variable == NAME
        return "error", str(exc)


@pytest.mark.parametrize("value", BOOLS)
def test_bool_parsers_agree(value):
    assert _outcome(settings.parse_bool, NAME, value) == _outcome(_cpp.testing.parse_bool, NAME, value)


@pytest.mark.parametrize("value", UINTS)
@pytest.mark.parametrize("maximum", [5, 1024, (1 << 64) - 1])
def test_uint_parsers_agree(value, maximum):
    assert (_outcome(settings.parse_uint, NAME, value, maximum)
            == _outcome(_cpp.testing.parse_uint, NAME, value, maximum))


@pytest.mark.parametrize("value", FLOATS)
def test_float_parsers_agree(value):
    assert _outcome(settings.parse_float, NAME, value, 1e6) == _outcome(_cpp.testing.parse_float, NAME, value, 1e6)


@pytest.mark.parametrize("value", CHOICES)
def test_choice_parsers_agree(value):
    choices = ["auto", "direct", "buffered", "off"]
    assert _outcome(settings.parse_choice, NAME, value, choices) == _outcome(_cpp.testing.parse_choice, NAME, value,
                                                                              choices)


def test_parsers_accept_and_reject_what_the_rules_say():
    assert [settings.parse_bool(NAME, v) for v in ("1", " TRUE ", "yes", "On", "0", "false", "NO", "off")] == \
        [True] * 4 + [False] * 4
    assert settings.parse_uint(NAME, " 0042 ", 100) == 42
    assert settings.parse_float(NAME, "2.5e1", 100) == 25.0
    for parse, value in [(settings.parse_bool, "2"), (settings.parse_uint, "-1"), (settings.parse_uint, "101"),
                         (settings.parse_float, "nan"), (settings.parse_float, "-0.5"), (settings.parse_float, "1e3")]:
        with pytest.raises(SettingsError, match=re.escape(f'{NAME}="{value}" is not valid: expected ')):
            parse(NAME, value, *([] if parse is settings.parse_bool else [100]))


# ---------------------------------------------------------------- every variable declared once

_NAME_RE = re.compile(rb"FASTSAFETENSORS_[A-Z0-9_]+")
_SOURCES = (".py", ".cpp", ".hpp")


def _sources(*dirs):
    for d in dirs:
        for base, _, files in os.walk(os.path.join(ROOT, d)):
            for f in files:
                if f.endswith(_SOURCES):
                    yield os.path.join(base, f)


def test_every_variable_in_the_sources_is_declared():
    used = {}
    for path in _sources("fastsafetensors", "csrc", "benchmarks"):
        with open(path, "rb") as f:
            for name in _NAME_RE.findall(f.read()):
                used.setdefault(name.decode(), os.path.relpath(path, ROOT))
    assert used, "the scan found no variable at all: the pattern or the paths are wrong"
    undeclared = {n: p for n, p in used.items() if n not in settings.SETTINGS}
    assert not undeclared, f"declare these in fastsafetensors/settings.py: {undeclared}"


def test_only_the_settings_modules_read_the_variables():
    readers = re.compile(rb"(os\.environ(\.get)?|getenv)\s*[\[(]\s*[\"']FASTSAFETENSORS_")
    allowed = {os.path.join("fastsafetensors", "settings.py"), os.path.join("csrc", "settings.cpp")}
    offenders = [os.path.relpath(p, ROOT) for p in _sources("fastsafetensors", "csrc")
                 if os.path.relpath(p, ROOT) not in allowed and readers.search(open(p, "rb").read())]
    assert not offenders, f"read FASTSAFETENSORS_* variables through fastsafetensors.settings: {offenders}"
    # The pattern finds the reads this module replaced:
    assert readers.search(b'os.environ.get("FASTSAFETENSORS_GDS", "")')
    assert readers.search(b'std::getenv("FASTSAFETENSORS_PIN")')


def _default_doc(s):
    if callable(s.default):
        return "per machine"
    if s.default is None:
        return "unset"
    if isinstance(s.default, bool):
        return str(int(s.default))
    return f"{s.default:g}" if isinstance(s.default, float) else str(s.default)


def _accepts_doc(s):
    if s.kind == "bool":
        return "boolean"
    if s.kind == "int":
        return f"{s.minimum} to {int(s.maximum)}"
    if s.kind == "float":
        return f"0 to {s.maximum:.15g}"
    if s.kind == "text":
        return "text"
    return "`" + "`, `".join(s.choices) + "`"


def test_usage_docs_list_every_variable_as_declared():
    rows = [f"| `{s.name}` | {_accepts_doc(s)} | {_default_doc(s)} | {s.help} |" for s in settings.SETTINGS.values()]
    with open(os.path.join(ROOT, "docs", "usage.md")) as f:
        text = f.read()
    table = re.search(r"\| variable \| accepts \| default \| effect \|\n\|[-|]+\|\n((?:\|.*\|\n)+)", text)
    assert table, "docs/usage.md has no environment variable table"
    assert table.group(1).splitlines() == rows


# ---------------------------------------------------------------- what each variable now means


@pytest.mark.parametrize("value, want", [("no", False), ("off", False), ("false", False), ("FALSE", False),
                                         ("0", False), ("", False), ("yes", True), ("1", True), ("On", True)])
def test_odirect_words(monkeypatch, value, want):
    monkeypatch.setenv("FASTSAFETENSORS_ODIRECT", value)
    assert _direct_io_default() is want


@pytest.mark.parametrize("value, want", [("no", False), ("OFF", False), ("0", False), ("yes", True), ("", True)])
def test_numa_words(monkeypatch, value, want):
    monkeypatch.setenv("FASTSAFETENSORS_NUMA", value)
    assert numa_enabled() is want


@pytest.mark.parametrize("value", ["off", "buffered", " OFF "])
def test_gds_off_never_asks_for_cufile(monkeypatch, value):
    def no_cufile():
        raise AssertionError("GDS=off must not look for cuFile")

    monkeypatch.setenv("FASTSAFETENSORS_GDS", value)
    monkeypatch.setattr(_cpp, "gds_status", no_cufile)
    assert gds_mode(nogds=False) == "off"


def test_threads_read_at_use_time(monkeypatch):
    monkeypatch.setenv("FASTSAFETENSORS_THREADS", " 7 ")
    assert default_threads() == 7
    monkeypatch.delenv("FASTSAFETENSORS_THREADS")
    assert default_threads() == max(4, min(16, 2 * (os.cpu_count() or 1)))


@pytest.mark.parametrize("name, value", [("FASTSAFETENSORS_THREADS", "four"), ("FASTSAFETENSORS_THREADS", "0"),
                                         ("FASTSAFETENSORS_GDS", "of"), ("FASTSAFETENSORS_MAPPING", "false"),
                                         ("FASTSAFETENSORS_ODIRECT", "2"), ("FASTSAFETENSORS_STAGING_MB", "-1")])
def test_malformed_python_variables_raise_naming_them(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=f'^{name}="{value}" is not valid: expected ') as info:
        settings.get(name)
    assert info.value.variable == name


@pytest.mark.parametrize("value", ["2", "always", "junk"])
def test_engine_huge_pages_malformed_raises_settings_error(monkeypatch, value):
    monkeypatch.setenv("FASTSAFETENSORS_HUGE_PAGES", value)
    with pytest.raises(SettingsError, match='FASTSAFETENSORS_HUGE_PAGES=".*" is not valid') as info:
        _cpp.HostBuffer.allocate(4 << 20)
    assert info.value.variable == "FASTSAFETENSORS_HUGE_PAGES"


@pytest.mark.skipif("[madvise]" not in open("/sys/kernel/mm/transparent_hugepage/enabled").read()
                    and "[always]" not in open("/sys/kernel/mm/transparent_hugepage/enabled").read(),
                    reason="transparent huge pages are off on this machine")
@pytest.mark.parametrize("value, want", [("true", True), ("ON", True), ("no", False)])
def test_engine_huge_pages_words(monkeypatch, value, want):
    monkeypatch.setenv("FASTSAFETENSORS_HUGE_PAGES", value)
    assert _cpp.HostBuffer.allocate(4 << 20).huge_pages is want


def _run(code, env, timeout=60):
    env = dict(os.environ, PYTHONPATH=PACKAGE_PARENT, **env)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("name, value", [("FASTSAFETENSORS_HOST_CACHE_MB", "abc"),
                                         ("FASTSAFETENSORS_HOST_CACHE_MB", "-1"),
                                         ("FASTSAFETENSORS_HOST_CACHE_MB", "17592186044416"),
                                         ("FASTSAFETENSORS_HOST_CACHE_SECONDS", "nan"),
                                         ("FASTSAFETENSORS_HOST_CACHE_SECONDS", "-1"),
                                         ("FASTSAFETENSORS_HOST_CACHE_SECONDS", "1e7")])
def test_engine_host_cache_malformed_raises_on_first_use(name, value):
    # The cache reads its variables once per process: a fresh one sees them.
    code = ("from fastsafetensors import _cpp\n"
            "from fastsafetensors.errors import SettingsError\n"
            "try:\n    _cpp.host_cache_stats()\nexcept SettingsError as e:\n    print('raised', e.variable)\n"
            "try:\n    _cpp.HostBuffer.allocate(4 << 20)\nexcept SettingsError as e:\n    print('raised', e.variable)\n")
    done = _run(code, {name: value})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n") == [f"raised {name}", f"raised {name}", ""]


def test_engine_host_cache_reads_its_bounds():
    done = _run("from fastsafetensors import _cpp; s = _cpp.host_cache_stats(); print(s['limit'], s['hold_seconds'])",
                {"FASTSAFETENSORS_HOST_CACHE_MB": " 3 ", "FASTSAFETENSORS_HOST_CACHE_SECONDS": "2.5"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(3 << 20), "2.5"]


@pytest.mark.parametrize("value, debug", [("no", False), ("off", False), ("0", False), ("yes", True), ("1", True)])
def test_debug_words(value, debug):
    done = _run("import logging, fastsafetensors; print(logging.getLogger('fastsafetensors').level)",
                {"FASTSAFETENSORS_DEBUG": value})
    assert done.returncode == 0, done.stderr
    assert (int(done.stdout) == logging.DEBUG) is debug


# ---------------------------------------------------------------- fastsafetensors env


def test_env_prints_every_variable_and_its_source(monkeypatch, capsys):
    for name in settings.SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FASTSAFETENSORS_THREADS", "3")
    monkeypatch.setenv("FASTSAFETENSORS_GDS", "Direct")
    assert main(["env"]) == 0
    lines = {line.split()[0]: line.split()[1:3] for line in capsys.readouterr().out.splitlines()[1:]}
    assert set(lines) == set(settings.SETTINGS)
    assert lines["FASTSAFETENSORS_THREADS"] == ["3", "environment"]
    assert lines["FASTSAFETENSORS_GDS"] == ["direct", "environment"]
    assert lines["FASTSAFETENSORS_ODIRECT"] == ["False", "default"]
    assert lines["FASTSAFETENSORS_MAPPING"] == ["0", "default"]


def test_env_with_a_malformed_variable_exits_1_with_one_line(monkeypatch, capsys):
    monkeypatch.setenv("FASTSAFETENSORS_HOST_CACHE_SECONDS", "nan")
    assert main(["env"]) == 1
    err = capsys.readouterr().err
    assert err == ('fastsafetensors env: SettingsError: FASTSAFETENSORS_HOST_CACHE_SECONDS="nan" is not valid: '
                   "expected a number from 0 to 1000000\n")
