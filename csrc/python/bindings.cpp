// Python bindings of the engine: fastsafetensors._cpp (private; the package wraps it). The engine
// knows no framework; tensors leave it as DLPack capsules that the Python backends import.
// Bindings only tests and benchmarks use go into its `testing` submodule, which the library never
// imports (tests/test_surface.py checks that).
#include <sys/sysmacros.h>

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <pybind11/stl_bind.h>

#include <cstring>
#include <optional>
#include <tuple>

#include "bindings.hpp"
#include "fastsafetensors/detail/populate.hpp"
#include "fastsafetensors/buffer.hpp"
#include "fastsafetensors/cold_reads.hpp"
#include "fastsafetensors/dlpack.hpp"
#include "fastsafetensors/error.hpp"
#include "fastsafetensors/file.hpp"
#include "fastsafetensors/file_mapping.hpp"
#include "fastsafetensors/header.hpp"
#include "fastsafetensors/host_reader.hpp"
#include "fastsafetensors/io_hooks.hpp"
#include "fastsafetensors/read_plan.hpp"
#include "fastsafetensors/settings.hpp"

namespace py = pybind11;
using namespace fst;

void fst::python::raise_python(const char* name, const std::string& message, const py::dict& extra) {
  py::object cls = py::module_::import("fastsafetensors.errors").attr(name);
  py::object exc = cls(message, **extra);
  PyErr_SetObject(cls.ptr(), exc.ptr());
}

namespace {
using fst::python::raise_python;

void translate_errors(std::exception_ptr p) {
  try {
    if (p) std::rethrow_exception(p);
  } catch (const NotRegularFileError& e) {
    py::dict extra;
    extra["filename"] = e.path();
    raise_python("NotRegularFileError", e.what(), extra);
  } catch (const FileChangedError& e) {
    py::dict extra;
    extra["filename"] = e.path();
    raise_python("FileChangedError", e.what(), extra);
  } catch (const FormatError& e) {
    py::dict extra;
    if (!e.tensor().empty()) extra["tensor"] = e.tensor();
    if (!e.path().empty()) extra["filename"] = e.path();
    raise_python(format_error_name(e.kind()), e.what(), extra);
  } catch (const ReadError& e) {
    py::dict extra;
    extra["filename"] = e.path();
    extra["offset"] = e.offset();
    extra["errno"] = e.error_number();
    raise_python(e.truncated() ? "TruncatedFileError" : "ReadError", e.what(), extra);
  } catch (const SettingsError& e) {
    py::dict extra;
    extra["variable"] = e.variable();
    raise_python("SettingsError", e.what(), extra);
  } catch (const ResourceError& e) {
    py::dict extra;
    extra["errno"] = e.error_number();
    raise_python("ResourceError", e.what(), extra);
  }
}

void delete_unconsumed(PyObject* capsule) {
  // A consumer renames the capsule when it takes ownership; only an untaken one is ours to free.
  if (PyCapsule_IsValid(capsule, kCapsuleNameVersioned)) {
    auto* m = static_cast<DLManagedTensorVersioned*>(PyCapsule_GetPointer(capsule, kCapsuleNameVersioned));
    if (m && m->deleter) m->deleter(m);
  } else if (PyCapsule_IsValid(capsule, kCapsuleName)) {
    auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule, kCapsuleName));
    if (m && m->deleter) m->deleter(m);
  }
}

py::object dlpack_capsule(const TensorView& v, const py::object& stream, const py::object& max_version,
                          const py::object& dl_device, const py::object& copy) {
  (void)stream;  // host memory needs no stream ordering
  if (!copy.is_none() && copy.cast<bool>())
    throw py::buffer_error("fastsafetensors tensors export without copying only");
  if (!dl_device.is_none()) {
    auto want = dl_device.cast<std::pair<int, int>>();
    DLDevice have = v.owner->device();
    if (want.first != have.device_type || want.second != have.device_id) {
      throw py::buffer_error("cannot export to another device");
    }
  }
  bool versioned = !max_version.is_none() && max_version.cast<std::pair<int, int>>().first >= 1;
  PyObject* cap = versioned ? PyCapsule_New(to_dlpack_versioned(v), kCapsuleNameVersioned, delete_unconsumed)
                            : PyCapsule_New(to_dlpack(v), kCapsuleName, delete_unconsumed);
  if (cap == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(cap);
}

unsigned long g_main_thread = 0;

// The engine's interrupt check: on Python's main thread (the only one that handles signals) a
// pending signal's handler runs, and its exception (KeyboardInterrupt) is thrown through the
// engine to the caller. Other threads retry as before.
void check_python_signals() {
  if (PyThread_get_thread_ident() != g_main_thread) return;
  py::gil_scoped_acquire gil;
  if (PyErr_CheckSignals() != 0) throw py::error_already_set();
}

std::vector<uint32_t> selection_from(const py::object& selection) {
  if (selection.is_none()) return {};
  return selection.cast<std::vector<uint32_t>>();
}

// A cold shape as cold_read_shape and HostReader.read report it.
py::dict shape_dict(const ColdShape& s) {
  py::dict out;
  out["threads"] = s.queue_depth;
  out["request_bytes"] = s.request_bytes;
  out["direct"] = s.direct;
  out["streams"] = s.streams;
  out["direct_asked"] = s.direct_asked;
  out["direct_refusal"] = s.direct_refusal;
  out["rule"] = s.rule;
  return out;
}

py::list cold_list(const std::vector<ColdDeviceRead>& cold) {
  py::list out;
  for (const ColdDeviceRead& c : cold) {
    py::dict d = shape_dict(c.shape);
    d["device"] = std::to_string(major(c.device)) + ":" + std::to_string(minor(c.device));
    d["file"] = c.path;
    d["bytes"] = c.bytes;
    out.append(d);
  }
  return out;
}

}  // namespace

py::dict fst::python::read_stats_dict(const ReadStats& stats) {
  py::dict out;
  out["bytes"] = stats.bytes;
  out["reads"] = stats.reads;
  out["gap_bytes"] = stats.gap_bytes;
  out["populated"] = stats.populated;
  out["cold_bytes"] = stats.cold_bytes;
  out["cold_reads"] = cold_list(stats.cold);
  out["residency_steps"] = stats.residency_steps;
  out["bytes_per_file"] = stats.bytes_per_file;
  return out;
}

PYBIND11_MODULE(_cpp, m) {
  m.doc() = "fastsafetensors engine: header parsing, read planning, parallel reads, DLPack export";
  py::module_ testing = m.def_submodule("testing", "Bindings for tests and benchmarks; never needed in normal use.");
  py::register_exception_translator(translate_errors);
  g_main_thread = py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();
  io_hooks::set_interrupt_check(&check_python_signals);

  py::class_<TensorInfo>(m, "TensorInfo")
      .def_readonly("name", &TensorInfo::name)
      .def_property_readonly("dtype", [](const TensorInfo& t) { return std::string(dtype_name(t.dtype)); })
      .def_property_readonly("shape", [](const TensorInfo& t) { return py::tuple(py::cast(t.shape)); })
      .def_readonly("begin", &TensorInfo::begin)
      .def_readonly("end", &TensorInfo::end)
      .def_property_readonly("nbytes", &TensorInfo::nbytes);

  py::bind_vector<std::vector<TensorInfo>>(m, "TensorInfoList");

  py::class_<Header>(m, "Header")
      .def_readonly("header_length", &Header::header_length)
      .def_readonly("data_start", &Header::data_start)
      .def_readonly("file_size", &Header::file_size)
      .def_readonly("tensors", &Header::tensors)
      .def_property_readonly("metadata", [](const Header& h) -> py::object {
        if (!h.has_metadata && h.metadata.empty()) return py::none();
        py::dict d;
        for (const auto& [k, v] : h.metadata) d[py::str(k)] = py::str(v);
        return std::move(d);
      });

  m.def("read_header", &read_header, py::arg("path"), py::call_guard<py::gil_scoped_release>(),
        "Read and validate the header of a safetensors file.");
  testing.def(
      "parse_file_image",
      [](py::bytes image) {
        std::string_view s = image;
        auto* p = reinterpret_cast<const uint8_t*>(s.data());
        uint64_t n = parse_header_length(p, s.size(), s.size());
        return parse_header(s.substr(8, n), s.size());
      },
      py::arg("image"), "Validate a whole safetensors file held in memory (fuzzing, tests).");
  m.def(
      "dtype_table",
      [] {
        py::list rows;
        for (const DtypeInfo* d = dtypes_begin(); d != dtypes_end(); ++d) {
          py::object code = d->dlpack_code == kRawBytes ? py::object(py::none()) : py::int_(d->dlpack_code);
          rows.append(py::make_tuple(std::string(d->name), d->bits, code));
        }
        return rows;
      },
      "Every safetensors dtype as (name, bits, DLPack type code or None where it travels as bytes).");
  m.def(
      "parse_header_bytes",
      [](py::bytes prefix, uint64_t file_size) {
        std::string_view s = prefix;
        auto* p = reinterpret_cast<const uint8_t*>(s.data());
        uint64_t n = parse_header_length(p, s.size(), file_size);
        if (s.size() < 8 + n) throw py::value_error("parse_header_bytes: the prefix ends before the header does");
        py::gil_scoped_release nogil;
        return parse_header(s.substr(8, n), file_size);
      },
      py::arg("prefix"), py::arg("file_size"),
      "Validate the header of a file of `file_size` bytes from its first bytes (at least 8 + the "
      "header length; remote objects fetch these with a ranged GET). The same checks as read_header.");

  py::class_<ReadRange>(m, "ReadRange")
      .def(py::init([](uint32_t file, uint32_t dst, uint64_t file_offset, uint64_t length, uint64_t dst_offset) {
             return ReadRange{file, dst, file_offset, length, dst_offset};
           }),
           py::arg("file"), py::arg("dst"), py::arg("file_offset"), py::arg("length"), py::arg("dst_offset"))
      .def_readwrite("file", &ReadRange::file)
      .def_readwrite("dst", &ReadRange::dst)
      .def_readwrite("file_offset", &ReadRange::file_offset)
      .def_readwrite("length", &ReadRange::length)
      .def_readwrite("dst_offset", &ReadRange::dst_offset)
      .def("__repr__", [](const ReadRange& r) {
        return "ReadRange(file=" + std::to_string(r.file) + ", dst=" + std::to_string(r.dst) +
               ", file_offset=" + std::to_string(r.file_offset) + ", length=" + std::to_string(r.length) +
               ", dst_offset=" + std::to_string(r.dst_offset) + ")";
      });
  py::bind_vector<std::vector<ReadRange>>(m, "RangeList");

  py::class_<FilePlan>(m, "FilePlan")
      .def_readonly("tensor_offsets", &FilePlan::tensor_offsets)
      .def_readonly("ranges", &FilePlan::ranges)
      .def_readonly("dst_size", &FilePlan::dst_size);
  m.def(
      "plan_file",
      [](const Header& h, uint32_t file, uint32_t dst, const py::object& selection, uint64_t alignment,
         uint64_t max_gap) { return plan_file(h, file, dst, selection_from(selection), alignment, max_gap); },
      py::arg("header"), py::arg("file"), py::arg("dst"), py::arg("selection") = py::none(),
      py::arg("alignment") = kTensorAlignment, py::arg("max_gap") = 0);
  m.def(
      "plan_box",
      [](const Header& h, uint32_t tensor, std::vector<uint64_t> start, std::vector<uint64_t> stop, uint32_t file,
         uint32_t dst, uint64_t dst_offset) {
        try {
          return plan_box(h, tensor, Box{std::move(start), std::move(stop)}, file, dst, dst_offset);
        } catch (const std::invalid_argument& e) {
          throw py::value_error(e.what());
        }
      },
      py::arg("header"), py::arg("tensor"), py::arg("start"), py::arg("stop"), py::arg("file"), py::arg("dst"),
      py::arg("dst_offset") = 0,
      "Ranges reading the box [start, stop) of a tensor into a contiguous C-order destination.");
  m.def(
      "plan_boxes",
      [](const Header& h, uint32_t tensor, uint32_t file,
         const std::vector<std::tuple<std::vector<uint64_t>, std::vector<uint64_t>, uint32_t, uint64_t>>& targets,
         std::vector<ReadRange>& out) {
        std::vector<BoxTarget> boxes;
        boxes.reserve(targets.size());
        for (const auto& [start, stop, dst, dst_offset] : targets)
          boxes.push_back({Box{start, stop}, dst, dst_offset});
        try {
          plan_boxes(h, tensor, boxes, file, out);
        } catch (const std::invalid_argument& e) {
          throw py::value_error(e.what());
        }
      },
      py::arg("header"), py::arg("tensor"), py::arg("file"), py::arg("targets"), py::arg("out"),
      "Append the ranges reading several boxes (start, stop, dst, dst_offset) of one tensor to `out`, "
      "in file order.");
  // Shard plans hold a range per strided run (millions for column shards): sum them here, not in Python.
  m.def("bytes_per_file", &bytes_per_file, py::arg("ranges"), py::arg("files"),
        "Bytes the ranges read from each of `files` file indices, as a list indexed by file.");
  m.attr("TENSOR_ALIGNMENT") = kTensorAlignment;
  m.attr("MAX_HEADER_LENGTH") = kMaxHeaderLength;

  py::class_<Buffer, std::shared_ptr<Buffer>>(m, "Buffer")
      .def_property_readonly("data_ptr", [](Buffer& b) { return reinterpret_cast<uintptr_t>(b.data()); })
      .def_property_readonly("size", &Buffer::size)
      .def_property_readonly("device",
                             [](const Buffer& b) {
                               DLDevice d = b.device();
                               return py::make_tuple(d.device_type, d.device_id);
                             })
      .def(
          "view",
          [](const std::shared_ptr<Buffer>& b, uint64_t offset, std::vector<int64_t> shape, uint8_t code,
             uint8_t bits) {
            uint64_t numel = 1;
            for (int64_t d : shape) {
              if (d < 0) throw py::value_error("negative dimension");
              numel *= static_cast<uint64_t>(d);
            }
            if (bits % 8 != 0 || offset > b->size() || numel * (bits / 8) > b->size() - offset) {
              throw py::value_error("view outside its buffer");
            }
            return TensorView{b, offset, std::move(shape), DLDataType{code, bits, 1}};
          },
          py::arg("offset"), py::arg("shape"), py::arg("code"), py::arg("bits"),
          "A DLPack-exportable view of `shape` elements of (code, bits) starting at `offset`.");

  py::class_<HostBuffer, Buffer, std::shared_ptr<HostBuffer>>(m, "HostBuffer")
      .def_static(
          "allocate",
          [](size_t size, std::optional<bool> huge_pages) {
            bool huge = huge_pages.value_or(huge_pages_by_default());
            py::gil_scoped_release nogil;
            return HostBuffer::allocate(size, huge);
          },
          py::arg("size"), py::arg("huge_pages") = py::none(),
          "Host memory for `size` bytes; huge_pages=None follows FASTSAFETENSORS_HUGE_PAGES (off).")
      .def(
          "write",
          [](HostBuffer& b, uint64_t offset, const py::buffer& data) {
            py::buffer_info in = data.request();  // the caller's bytes, held until the copy is done
            if (in.ndim > 1 || (in.ndim == 1 && in.strides[0] != in.itemsize)) {
              throw py::value_error("write takes contiguous one-dimensional bytes");
            }
            auto n = static_cast<uint64_t>(in.size * in.itemsize);
            if (offset > b.size() || n > b.size() - offset) throw py::value_error("write outside its buffer");
            py::gil_scoped_release nogil;
            // Mapping the destination pages in first costs less than faulting them in under the copy.
            detail::populate(b.data() + offset, n);
            std::memcpy(b.data() + offset, in.ptr, n);
          },
          py::arg("offset"), py::arg("data"),
          "Copies the bytes of a contiguous buffer `data` to `offset` (bounds checked; without the GIL).")
      .def_property_readonly("huge_pages", &HostBuffer::huge_pages)
      .def_property_readonly("reused", &HostBuffer::reused, "Whether the memory came from the host cache.");
  testing.def("host_live_bytes", &HostBuffer::live_bytes, "Bytes of engine host buffers still alive.");

  py::class_<FileMapping, Buffer, std::shared_ptr<FileMapping>>(m, "FileMapping")
      .def_static(
          "map",
          [](const ReadSource& source) {
            py::gil_scoped_release nogil;
            return FileMapping::map(source);
          },
          py::arg("source"), "The whole file mapped private and copy-on-write (writes never reach it).");

  py::class_<TensorView>(m, "DLPackTensor")
      .def_property_readonly(
          "data_ptr", [](const TensorView& v) { return reinterpret_cast<uintptr_t>(v.owner->data() + v.offset); })
      .def_readonly("shape", &TensorView::shape)
      .def_property_readonly("buffer", [](const TensorView& v) { return v.owner; })
      .def("__dlpack__", &dlpack_capsule, py::kw_only(), py::arg("stream") = py::none(),
           py::arg("max_version") = py::none(), py::arg("dl_device") = py::none(), py::arg("copy") = py::none())
      .def("__dlpack_device__", [](const TensorView& v) {
        DLDevice d = v.owner->device();
        return py::make_tuple(d.device_type, d.device_id);
      });

  py::class_<ReadSource>(m, "ReadSource")
      .def(py::init([](std::string path, uint64_t size) {
             return ReadSource{std::move(path), size, false, {}};
           }),
           py::arg("path"), py::arg("expected_size"))
      .def(py::init([](std::string path, const Header& h) {
             return ReadSource{std::move(path), h.file_size, h.from_file, h.identity};
           }),
           py::arg("path"), py::arg("header"),
           "A file whose header was read by read_header: its identity is checked too.")
      .def_readonly("path", &ReadSource::path)
      .def_readonly("expected_size", &ReadSource::expected_size);

  py::class_<HostReader>(m, "HostReader")
      .def(py::init<unsigned>(), py::arg("threads"))
      .def_property_readonly("threads", &HostReader::threads)
      .def(
          "read",
          [](HostReader& r, const std::vector<ReadSource>& sources, const std::vector<ReadRange>& ranges,
             const std::vector<std::shared_ptr<Buffer>>& buffers, uint64_t chunk_bytes, bool direct, uint64_t max_gap,
             uint64_t batch_bytes, const py::object& on_batch, bool cold_reads) {
            std::vector<uint8_t*> dsts;
            std::vector<uint64_t> sizes;
            ReadOptions options{chunk_bytes, direct, max_gap, {}, batch_bytes, {}, cold_reads};
            if (batch_bytes > 0) {
              // Between batches: Ctrl-C (a pending signal raises here), then the caller's callback.
              options.after_batch = [&on_batch](uint64_t bytes) {
                py::gil_scoped_acquire gil;
                if (PyErr_CheckSignals() != 0) throw py::error_already_set();
                if (!on_batch.is_none()) on_batch(bytes);
              };
            }
            for (const auto& b : buffers) {
              if (b->device().device_type != kDLCPU) throw py::value_error("HostReader reads into host buffers only");
              dsts.push_back(b->data());
              sizes.push_back(b->size());
              auto* host = dynamic_cast<HostBuffer*>(b.get());
              options.resident.push_back(host != nullptr && host->reused());
            }
            ReadStats stats;
            {
              py::gil_scoped_release nogil;
              stats = r.read(sources, ranges, dsts, sizes, options);
            }
            return fst::python::read_stats_dict(stats);
          },
          py::arg("sources"), py::arg("ranges"), py::arg("buffers"), py::arg("chunk_bytes") = uint64_t{8} << 20,
          py::arg("direct") = false, py::arg("max_gap") = ReadOptions{}.max_gap, py::arg("batch_bytes") = 0,
          py::arg("on_batch") = py::none(), py::arg("cold_reads") = false,
          "Read every range into its buffer, neighbouring ranges of a file in one vectored read (gaps of up "
          "to max_gap bytes read and dropped). With batch_bytes > 0, in batches of about that many bytes: "
          "between them pending signals are raised (Ctrl-C) and on_batch(bytes delivered) is called. With "
          "cold_reads (and not direct), ranges outside the page cache are read with their device's cold shape "
          "(cold_read_shape) on threads of their own. Returns {'bytes', 'reads', 'gap_bytes', 'populated' "
          "(destination bytes faulted in before the copy), 'cold_bytes' (read with a cold shape), 'cold_reads' "
          "(per device read cold: cold_read_shape's keys as used, 'direct' whether O_DIRECT was, and 'device' "
          "'MAJ:MIN', 'file' (the first read from it), 'bytes'), "
          "'bytes_per_file' (a list indexed by source)}.");

  testing.def(
      "cold_read_shape",
      [](uint64_t device, const std::string& sysfs_root) {
        return shape_dict(cold_shape_for_device(sysfs_root, device));
      },
      py::arg("device"), py::arg("sysfs_root") = "/sys",
      "How a load reads bytes of a file on `device` (its st_dev) that are not in the page cache: "
      "{'threads', 'request_bytes', 'direct', 'streams' (each thread its own contiguous part, buffered), "
      "'direct_asked' (FASTSAFETENSORS_COLD_ODIRECT=1), "
      "'direct_refusal' (why the device cannot have O_DIRECT, or ''), 'rule' (the sysfs values it came "
      "from, or why the fallback)}, with the environment's overrides applied (docs/usage.md, Cold reads).");
  testing.def("set_sysfs_root", &set_sysfs_root, py::arg("root"),
              "Loads read block queue limits under `root` instead of /sys ('' restores /sys).");

  testing.def(
      "evict_page_cache", [](const std::string& path) { File(path).evict_from_page_cache(); }, py::arg("path"),
      "Drop a file's pages from the page cache (posix_fadvise DONTNEED).");
  fst::python::bind_integrity(m, testing);
  fst::python::bind_testing(testing);
  fst::python::bind_device(m, testing);
  fst::python::bind_numa(m, testing);
  fst::python::bind_host_cache(m);
  fst::python::bind_placement(m);
}
