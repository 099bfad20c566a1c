"""One root for every error: ``except fastsafetensors.FastSafeTensorsError`` catches them all,
and each is still the builtin exception that fits it."""

import builtins

import pytest

import fastsafetensors
from fastsafetensors import errors

from .helpers import random_tensor, save


@pytest.mark.parametrize("name", [n for n in errors.__all__ if n != "FastSafeTensorsError"])
def test_every_error_has_the_root_and_a_builtin(name):
    cls = getattr(errors, name)
    assert issubclass(cls, fastsafetensors.FastSafeTensorsError)
    builtin = [b for b in cls.__mro__ if b.__module__ == "builtins" and b not in (object, BaseException, Exception)]
    assert builtin and all(getattr(builtins, b.__name__) is b for b in builtin), cls.__mro__


def test_errors_the_engine_raises_have_the_root(tmp_path, monkeypatch):
    text = tmp_path / "text.safetensors"
    text.write_text("hello, not a checkpoint")
    with pytest.raises(fastsafetensors.FastSafeTensorsError):
        fastsafetensors.load(str(text))  # HeaderTooLarge, from the C++ parser
    with pytest.raises(fastsafetensors.FastSafeTensorsError):
        fastsafetensors.load(str(tmp_path / "missing.safetensors"))  # ReadError, from the C++ reader
    good = save(tmp_path / "good.safetensors", {"w": random_tensor("F32", (2,), 0)})
    monkeypatch.setenv("FASTSAFETENSORS_ODIRECT", "perhaps")
    with pytest.raises(fastsafetensors.FastSafeTensorsError):
        fastsafetensors.load(good)  # SettingsError


def test_argument_errors_have_the_root(tmp_path):
    good = save(tmp_path / "good.safetensors", {"w": random_tensor("F32", (2,), 0)})
    with pytest.raises(errors.InvalidArgumentError, match="tensorflow") as bad_value:
        fastsafetensors.load(good, framework="tensorflow")
    assert isinstance(bad_value.value, ValueError)
    with pytest.raises(errors.ArgumentTypeError, match="not int") as bad_type:
        fastsafetensors.load(42)
    assert isinstance(bad_type.value, TypeError)
