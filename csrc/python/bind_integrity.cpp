// SHA-256 of files and of loaded files (fastsafetensors.integrity builds on these).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings.hpp"
#include "fastsafetensors/buffer.hpp"
#include "fastsafetensors/integrity.hpp"
#include "fastsafetensors/sha256.hpp"

namespace py = pybind11;

void fst::python::bind_integrity(py::module_& m, py::module_& testing) {
  testing.def(
      "sha256_bytes",
      [](py::bytes data, bool portable) {
        std::string_view s = data;
        Sha256 sha(portable);
        sha.update(s.data(), s.size());
        return Sha256::hex(sha.finish());
      },
      py::arg("data"), py::arg("portable") = false,
      "Hex SHA-256 of bytes with the engine's own code (`portable`: without the CPU's SHA extensions).");
  testing.attr("SHA256_IMPLEMENTATION") = Sha256::implementation();
  m.def("sha256_file", &sha256_of_file, py::arg("path"), py::call_guard<py::gil_scoped_release>(),
        "Hex SHA-256 of a whole file, streamed from disk.");
  m.def(
      "sha256_loaded_file",
      [](const Header& header, const std::string& path, uint32_t file, const std::vector<ReadRange>& ranges,
         const std::vector<std::shared_ptr<Buffer>>& buffers) {
        std::vector<const uint8_t*> dsts;
        std::vector<uint64_t> sizes;
        for (const auto& b : buffers) {
          if (b->device().device_type != kDLCPU) throw py::value_error("only host buffers can be hashed");
          dsts.push_back(b->data());
          sizes.push_back(b->size());
        }
        py::gil_scoped_release nogil;
        return sha256_of_loaded_file(header, path, file, ranges, dsts, sizes);
      },
      py::arg("header"), py::arg("path"), py::arg("file"), py::arg("ranges"), py::arg("buffers"),
      "Hex SHA-256 of plan file `file` after its ranges were read into `buffers`: the header bytes "
      "that were parsed and the loaded bytes are hashed from memory, the rest (unselected tensors) read "
      "from disk once, from the file the header was read from (else FileChangedError).");
}
