// Bindings of the host cache (host_cache.hpp): freed host buffers kept for the next load.
#include <pybind11/pybind11.h>

#include "bindings.hpp"
#include "fastsafetensors/host_cache.hpp"

namespace py = pybind11;

void fst::python::bind_host_cache(py::module_& m) {
  m.def(
      "host_cache_stats",
      [] {
        HostCacheStats s = host_cache_stats();
        py::dict d;
        d["bytes"] = s.bytes;
        d["entries"] = s.entries;
        d["lazy_bytes"] = s.lazy_bytes;
        d["hits"] = s.hits;
        d["misses"] = s.misses;
        d["limit"] = s.limit;
        d["hold_seconds"] = s.hold_seconds;
        return d;
      },
      "What the host cache keeps now and how often it served a buffer.");
  m.def("host_cache_clear", &host_cache_clear, py::call_guard<py::gil_scoped_release>(),
        "Unmap every kept host buffer.");
  m.def("host_cache_configure", &host_cache_configure, py::arg("limit_bytes"), py::arg("hold_seconds"),
        py::call_guard<py::gil_scoped_release>(), "Bounds of the host cache; limit_bytes=0 turns it off.");
}
