// Bindings of the GPU path: devices (CUDA through the run-time shim, or the host stand-in used
// by tests), engine-owned device buffers, and the device reader.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings.hpp"
#include "fastsafetensors/device.hpp"
#include "fastsafetensors/device_error.hpp"
#include "fastsafetensors/device_reader.hpp"
#include "fastsafetensors/shim/cudart.hpp"
#include "fastsafetensors/shim/cufile.hpp"
#include "fastsafetensors/shim/dlopen.hpp"

namespace py = pybind11;
using namespace fst;

namespace {

// Device memory that a Python object owns (an array from a framework's own allocator, e.g. JAX,
// which reserves most of the GPU for itself). Tensors exported from it hold this buffer, and so
// the owner: the framework's memory stays alive as long as any view of it.
class ForeignBuffer final : public Buffer {
 public:
  ForeignBuffer(uintptr_t ptr, size_t size, DLDevice device, py::object owner)
      : data_(reinterpret_cast<uint8_t*>(ptr)), size_(size), device_(device), owner_(std::move(owner)) {}
  ~ForeignBuffer() override {
    // The last view may die on any thread; the owner's reference count needs the GIL.
    if (!Py_IsInitialized()) {
      owner_.release();
      return;
    }
    py::gil_scoped_acquire gil;
    owner_ = py::object();
  }
  uint8_t* data() noexcept override { return data_; }
  size_t size() const noexcept override { return size_; }
  DLDevice device() const noexcept override { return device_; }

 private:
  uint8_t* data_;
  size_t size_;
  DLDevice device_;
  py::object owner_;
};

GdsMode gds_mode(const std::string& s) {
  if (s == "off") return GdsMode::Off;
  if (s == "auto") return GdsMode::Auto;
  if (s == "direct") return GdsMode::Direct;
  throw py::value_error("gds must be 'off', 'auto' or 'direct', not '" + s + "'");
}

py::dict stats_dict(const DeviceReadStats& s) {
  py::dict d;
  d["bytes"] = s.bytes;
  d["staged_bytes"] = s.staged_bytes;
  d["mapped_bytes"] = s.mapped_bytes;
  d["gds_bytes"] = s.gds_bytes;
  d["cached_files"] = s.cached_files;
  d["gds_files"] = s.gds_files;
  d["gds_compat"] = s.gds_compat;
  d["mapping_disabled"] = s.mapping_disabled;
  d["numa_node"] = s.numa_node;
  d["numa_cpus"] = s.numa_cpus;
  d["seconds"] = s.seconds;
  return d;
}

}  // namespace

void fst::python::bind_device(py::module_& m, py::module_& testing) {
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const GdsError& e) {
      raise_python("GdsError", e.what(), py::dict());
    } catch (const DeviceError& e) {
      raise_python("CudaError", e.what(), py::dict());
    }
  });

  m.def("add_cuda_search_dirs", &shim::add_search_dirs, py::arg("dirs"),
        "Folders to look for libcudart/libcufile in, after the copies already loaded.");
  testing.def("cuda_device_count", &cuda_device_count, py::call_guard<py::gil_scoped_release>(),
              "CUDA devices visible through the run-time loaded CUDA runtime (0 without one).");
  testing.def("cuda_runtime_error", &shim::cuda_runtime_error, "Why no CUDA runtime loaded ('' when one did).");
  testing.def("cuda_runtime_library", []() -> std::string {
    const shim::CudaRuntime* rt = shim::cuda_runtime();
    return rt ? rt->library : "";
  });
  m.def(
      "gds_status",
      []() {
        py::dict d;
        d["loaded"] = true;
        try {
          const shim::CuFile* cf = shim::cufile();
          d["loaded"] = cf != nullptr;
          d["available"] = cf != nullptr;
          d["compat_mode"] = cf ? cf->compat_mode : false;
          d["library"] = cf ? cf->library : "";
          d["error"] = cf ? "" : shim::cufile_error();
        } catch (const GdsError& e) {  // the library loaded but its driver did not open
          d["available"] = false;
          d["compat_mode"] = false;
          d["library"] = "";
          d["error"] = std::string(e.what());
        }
        return d;
      },
      "Loads libcufile and opens its driver (once per process); says whether that worked.");

  py::class_<Device, std::shared_ptr<Device>>(m, "Device")
      .def_property_readonly("name", &Device::name)
      .def_property_readonly("pci_bus_id", &Device::pci_bus_id)
      .def_property_readonly("dl_device", [](const Device& d) {
        DLDevice x = d.dl_device();
        return py::make_tuple(x.device_type, x.device_id);
      });
  m.def("cuda_device", &cuda_device, py::arg("ordinal") = 0, py::call_guard<py::gil_scoped_release>(),
        "The CUDA device `ordinal` (raises CudaError saying what is missing).");

  py::class_<HostDevice, Device, std::shared_ptr<HostDevice>>(testing, "HostDevice")
      .def(py::init<unsigned>(), py::arg("copy_delay_us") = 0)
      .def("set_pci_bus_id", &HostDevice::set_pci_bus_id, py::arg("bus_id"),
           "Report this bus id, so a reader places its lanes as for a GPU on it.")
      .def("fail_copy_at", &HostDevice::fail_copy_at, py::arg("n"))
      .def("fail_pinned_alloc_at", &HostDevice::fail_pinned_alloc_at, py::arg("n"))
      .def_property_readonly("copies", &HostDevice::copies)
      .def_property_readonly("registrations", &HostDevice::registrations)
      .def_property_readonly("live_pinned_bytes", &HostDevice::live_pinned_bytes)
      .def_property_readonly("live_device_bytes", &HostDevice::live_device_bytes)
      .def_property_readonly("live_registered_bytes", &HostDevice::live_registered_bytes);

  py::class_<ForeignBuffer, Buffer, std::shared_ptr<ForeignBuffer>>(m, "ForeignBuffer")
      .def(py::init([](uintptr_t ptr, size_t size, int32_t device_type, int32_t device_id, py::object owner) {
             return std::make_shared<ForeignBuffer>(ptr, size, DLDevice{device_type, device_id}, std::move(owner));
           }),
           py::arg("ptr"), py::arg("size"), py::arg("device_type"), py::arg("device_id"), py::arg("owner"),
           "Memory at `ptr` that `owner` (a framework's array) holds; views of it keep `owner` alive.");

  py::class_<DeviceBuffer, Buffer, std::shared_ptr<DeviceBuffer>>(m, "DeviceBuffer")
      .def_static("allocate", &DeviceBuffer::allocate, py::arg("device"), py::arg("size"),
                  py::call_guard<py::gil_scoped_release>());

  py::class_<DeviceReader, std::shared_ptr<DeviceReader>>(m, "DeviceReader")
      .def(py::init<std::shared_ptr<Device>, unsigned, uint64_t, unsigned, bool, const std::string&>(),
           py::arg("device"), py::arg("threads"), py::arg("staging_bytes"), py::arg("map_lanes") = 2,
           py::arg("numa") = true, py::arg("sysfs_root") = kDefaultSysfsRoot,
           "numa: run the lanes on the CPUs of the device's NUMA node (found under sysfs_root).")
      .def_property_readonly("staging_lanes", &DeviceReader::staging_lanes)
      .def_property_readonly("map_lanes", &DeviceReader::map_lanes)
      .def_property_readonly("slot_bytes", &DeviceReader::slot_bytes)
      .def_property_readonly("device", &DeviceReader::device)
      .def_property_readonly(
          "placement", [](const DeviceReader& r) { return fst::python::placement_dict(r.placement()); },
          "{bus_id, node, cpus, reason}: where the lanes run (cpus empty: left alone, reason says why).")
      .def_property_readonly("worker_cpus",
                             py::cpp_function(&DeviceReader::worker_cpus, py::call_guard<py::gil_scoped_release>()),
                             "CPUs each lane's thread was allowed during the last read (staging, then mapping lanes).")
      .def(
          "read",
          [](DeviceReader& r, const std::vector<ReadSource>& sources, const std::vector<ReadRange>& ranges,
             const std::vector<uintptr_t>& dst_ptrs, const std::vector<uint64_t>& dst_sizes, bool use_mapping,
             bool stage_cached, uint64_t map_group_bytes, double warm_fraction, const std::string& gds,
             uint64_t gds_register_bytes) {
            std::vector<uint8_t*> dsts;
            for (uintptr_t p : dst_ptrs) dsts.push_back(reinterpret_cast<uint8_t*>(p));
            DeviceReadOptions o;
            o.use_mapping = use_mapping;
            o.stage_cached = stage_cached;
            o.map_group_bytes = map_group_bytes;
            o.warm_fraction = warm_fraction;
            o.gds = gds_mode(gds);
            o.gds_register_bytes = gds_register_bytes;
            DeviceReadStats s;
            {
              py::gil_scoped_release nogil;
              s = r.read(sources, ranges, dsts, dst_sizes, o);
            }
            return stats_dict(s);
          },
          py::arg("sources"), py::arg("ranges"), py::arg("dst_ptrs"), py::arg("dst_sizes"),
          py::arg("use_mapping") = true, py::arg("stage_cached") = true,
          py::arg("map_group_bytes") = uint64_t{64} << 20, py::arg("warm_fraction") = 0.9, py::arg("gds") = "off",
          py::arg("gds_register_bytes") = uint64_t{256} << 20,
          "Read every range into device memory dst_ptrs[dst] + dst_offset; returns what each path carried.");
}
