// Strided placement (placement.hpp): the ranges of a box read straight into a shard, and the
// copies of staged boxes into shards, on a reader's threads without the GIL.
#include <stdexcept>
#include <tuple>

#include "fastsafetensors/buffer.hpp"
#include "fastsafetensors/host_reader.hpp"
#include "fastsafetensors/placement.hpp"
#include "bindings.hpp"

namespace py = pybind11;

namespace fst::python {

namespace {

// (src_offset, shape, dst_offset, dst_strides, itemsize): a StridedCopy as Python passes it.
using CopyTuple = std::tuple<uint64_t, std::vector<uint64_t>, uint64_t, std::vector<uint64_t>, unsigned>;

std::vector<StridedCopy> strided_copies(const std::vector<CopyTuple>& copies) {
  std::vector<StridedCopy> out;
  out.reserve(copies.size());
  for (const auto& [src_offset, shape, dst_offset, strides, itemsize] : copies) {
    out.push_back(StridedCopy{src_offset, shape, dst_offset, strides, itemsize});
  }
  return out;
}

}  // namespace

void bind_placement(py::module_& m) {
  m.def(
      "plan_strided",
      [](const Header& h, uint32_t tensor, const std::vector<uint64_t>& shape, std::vector<uint64_t> start,
         std::vector<uint64_t> stop, uint32_t file, uint32_t dst, uint64_t dst_offset,
         const std::vector<uint64_t>& dst_strides, std::vector<ReadRange>& out) {
        try {
          plan_strided(h, tensor, shape, Box{std::move(start), std::move(stop)}, file, dst, dst_offset, dst_strides,
                       out);
        } catch (const std::invalid_argument& e) {
          throw py::value_error(e.what());
        }
      },
      py::arg("header"), py::arg("tensor"), py::arg("shape"), py::arg("start"), py::arg("stop"), py::arg("file"),
      py::arg("dst"), py::arg("dst_offset"), py::arg("dst_strides"), py::arg("out"),
      "Append the ranges reading the box [start, stop) of a tensor viewed as `shape` into buffer `dst`, element "
      "i at dst_offset + sum(i * dst_strides) (in elements; the innermost stride 1), in file order.");
  m.def(
      "copy_strided",
      [](HostReader& reader, const std::shared_ptr<Buffer>& src, const std::shared_ptr<Buffer>& dst,
         const std::vector<CopyTuple>& copies) {
        if (src->device().device_type != kDLCPU || dst->device().device_type != kDLCPU) {
          throw py::value_error("copy_strided copies between host buffers only");
        }
        std::vector<StridedCopy> cs = strided_copies(copies);
        try {
          py::gil_scoped_release nogil;
          copy_strided(src->data(), src->size(), dst->data(), dst->size(), cs, reader.pool());
        } catch (const std::invalid_argument& e) {
          throw py::value_error(e.what());
        }
      },
      py::arg("reader"), py::arg("src"), py::arg("dst"), py::arg("copies"),
      "Copy C-contiguous blocks (src_offset, shape, dst_offset, dst_strides, itemsize) of `src` into `dst`, "
      "element i at dst_offset + sum(i * dst_strides) * itemsize bytes, on the reader's threads.");
  m.def(
      "read_strided",
      [](HostReader& reader, const std::vector<ReadSource>& sources, const std::vector<ReadRange>& ranges,
         const std::vector<CopyTuple>& copies, uint64_t box_bytes, const std::shared_ptr<Buffer>& dst,
         uint64_t max_gap) {
        if (dst->device().device_type != kDLCPU) throw py::value_error("read_strided copies into host buffers only");
        std::vector<StridedCopy> cs = strided_copies(copies);
        ReadStats stats;
        try {
          py::gil_scoped_release nogil;
          std::vector<File> files = open_sources(sources, false);
          stats = read_strided(files, ranges, cs, box_bytes, max_gap, dst->data(), dst->size(), reader.pool());
        } catch (const std::invalid_argument& e) {
          throw py::value_error(e.what());
        } catch (const std::out_of_range& e) {  // check_ranges: a range outside its box
          throw py::value_error(e.what());
        }
        return read_stats_dict(stats);
      },
      py::arg("reader"), py::arg("sources"), py::arg("ranges"), py::arg("copies"), py::arg("box_bytes"),
      py::arg("dst"), py::arg("max_gap") = ReadOptions{}.max_gap,
      "Read box k (the ranges whose dst is k, at dst_offset bytes into it; grouped by box in increasing "
      "order) into a box_bytes buffer of one of the reader's threads, and copy it into `dst` as copies[k] "
      "(src_offset into that buffer, shape, dst_offset, dst_strides, itemsize) says, while another thread "
      "reads the next. Returns HostReader.read's statistics.");
  m.def(
      "populate_strided",
      [](HostReader& reader, const std::vector<CopyTuple>& copies, uint64_t box_bytes,
         const std::shared_ptr<Buffer>& dst) {
        if (dst->device().device_type != kDLCPU) throw py::value_error("populate_strided takes host buffers only");
        std::vector<StridedCopy> cs = strided_copies(copies);
        try {
          py::gil_scoped_release nogil;
          return populate_strided(cs, box_bytes, dst->data(), dst->size(), reader.pool());
        } catch (const std::invalid_argument& e) {
          throw py::value_error(e.what());
        }
      },
      py::arg("reader"), py::arg("copies"), py::arg("box_bytes"), py::arg("dst"),
      "Fault in the bytes of `dst` that read_strided's `copies` (every copy of a load, once) will write, on the "
      "reader's threads; returns the bytes populated.");
}

}  // namespace fst::python
