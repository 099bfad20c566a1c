// Bindings for cutting shards out of a region in host memory (fastsafetensors.cpp.copy_boxes).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <map>
#include <memory>
#include <stdexcept>
#include <thread>
#include <tuple>

#include "bindings.hpp"
#include "fastsafetensors/box_copy.hpp"
#include "fastsafetensors/buffer.hpp"

namespace py = pybind11;

// RangeList is bound opaque in bindings.cpp; every file that takes one must say so too.

namespace {
using fst::Box;
using fst::BoxCopy;
using fst::Buffer;

// Started on first use and kept: copies are memory bound, a few threads saturate a socket.
fst::ThreadPool& copy_pool() {
  static fst::ThreadPool pool(std::max(1u, std::min(8u, std::thread::hardware_concurrency())));
  return pool;
}

using BoxTarget = std::tuple<std::vector<uint64_t>, std::vector<uint64_t>, std::shared_ptr<Buffer>, uint64_t>;

void check_host(const Buffer& b) {
  if (b.device().device_type != fst::kDLCPU) throw py::value_error("copy_boxes works on host buffers only");
}

void copy_boxes_py(const std::shared_ptr<Buffer>& src, uint64_t src_offset, const std::vector<uint64_t>& src_shape,
                   uint64_t elem_bytes, const std::vector<BoxTarget>& targets) {
  check_host(*src);
  Box whole{std::vector<uint64_t>(src_shape.size(), 0), src_shape};
  std::vector<BoxCopy> copies;
  try {
    uint64_t region = fst::box_bytes(src_shape, whole, elem_bytes);
    if (src_offset > src->size() || region > src->size() - src_offset) throw std::invalid_argument("region outside its buffer");
    for (const auto& [start, stop, dst, dst_offset] : targets) {
      check_host(*dst);
      Box box{start, stop};
      uint64_t n = fst::box_bytes(src_shape, box, elem_bytes);
      if (dst_offset > dst->size() || n > dst->size() - dst_offset) throw std::invalid_argument("box outside its destination buffer");
      copies.push_back(BoxCopy{src->data() + src_offset, src_shape, std::move(box), dst->data() + dst_offset, elem_bytes});
    }
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
  py::gil_scoped_release nogil;
  fst::copy_boxes(copy_pool(), copies);
}

}  // namespace

void fst::python::bind_shards(py::module_& m) {
  m.def("copy_boxes", &copy_boxes_py, py::arg("src"), py::arg("src_offset"), py::arg("src_shape"),
        py::arg("elem_bytes"), py::arg("targets"),
        "Copy boxes (start, stop, dst buffer, dst offset) of the C-order region at src_offset (src_shape "
        "elements of elem_bytes) into contiguous C-order destinations, in parallel.");
  // Shard plans hold a range per strided run (millions for column shards): sum them here, not in Python.
  m.def(
      "bytes_per_file",
      [](const std::vector<fst::ReadRange>& ranges) {
        std::map<uint32_t, uint64_t> out;
        for (const auto& r : ranges) out[r.file] += r.length;
        return out;
      },
      py::arg("ranges"), "Bytes the ranges read from each file index.");
}
