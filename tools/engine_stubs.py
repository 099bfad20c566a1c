"""Writes the type stubs of the compiled engine from the built module itself:
fastsafetensors/_cpp/__init__.pyi and fastsafetensors/_cpp/testing.pyi (the testing submodule).

    python3 tools/engine_stubs.py    # after changing csrc/python/, from the repository root

Needs mypy (its stub generator reads pybind11's signatures). tests/test_surface.py checks that the
stubs name exactly what the built module has.
"""

from __future__ import annotations

import pathlib
import sys

from mypy.stubgenc import InspectionStubGenerator

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # this checkout's build
from fastsafetensors import _cpp  # noqa: E402

OUT = pathlib.Path(_cpp.__file__).parent / "_cpp"


def stub(name: str, module) -> str:
    gen = InspectionStubGenerator(name, known_modules=["fastsafetensors._cpp"], module=module)
    gen.generate_module()
    return gen.output()


def main() -> None:
    OUT.mkdir(exist_ok=True)
    # The submodule is an attribute at run time; a stub package says so with an import.
    (OUT / "__init__.pyi").write_text(stub("fastsafetensors._cpp", _cpp) + "\nfrom . import testing as testing\n")
    (OUT / "testing.pyi").write_text(stub("fastsafetensors._cpp.testing", _cpp.testing))
    print(f"wrote {OUT}/__init__.pyi and testing.pyi")


if __name__ == "__main__":
    main()
