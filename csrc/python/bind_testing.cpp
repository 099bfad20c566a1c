// fastsafetensors._cpp.testing: fault injection for the test suite (see fault_injection.hpp), and the
// engine's settings parsers, which tests compare with fastsafetensors/settings.py.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings.hpp"
#include "fastsafetensors/fault_injection.hpp"
#include "fastsafetensors/settings.hpp"

namespace py = pybind11;

void fst::python::bind_testing(py::module_& t) {
  t.def(
      "set_fault",
      [](const std::string& kind, uint64_t after_calls, int64_t count) {
        faults::set_pread_fault(faults::parse_pread_fault(kind), after_calls, count);
      },
      py::arg("kind"), py::arg("after_calls") = 0, py::arg("count") = 1,
      "After `after_calls` good preads, make `count` (-1: all) fail as 'eio', 'eintr', 'short', 'eof', 'slow' (sleeps "
      "250 ms, then reads) or 'flip' (inverts the first byte read).");
  t.def("fail_allocations", &faults::set_allocation_fault, py::arg("after") = 0, py::arg("count") = 1,
        "After `after` good host buffer allocations, make `count` (-1: all) raise MemoryError.");
  t.def("fail_thread_starts", &faults::set_thread_fault, py::arg("after") = 0, py::arg("count") = 1,
        "After `after` good reader thread starts, make `count` (-1: all) fail as if the OS refused them.");
  t.def("refuse_odirect", &faults::set_direct_open_fault,
        "Make every open with O_DIRECT fail with EINVAL, as a file system without O_DIRECT does.");
  t.def("clear_faults", &faults::clear, "Remove every injected fault.");
  t.def("pread_calls", &faults::pread_calls, "preads seen since set_fault.");
  t.def("faults_injected", &faults::faults_injected, "Faults injected since set_fault.");
  t.def("parse_bool", &settings::parse_bool, py::arg("name"), py::arg("value"));
  t.def("parse_uint", &settings::parse_uint, py::arg("name"), py::arg("value"), py::arg("max"));
  t.def("parse_float", &settings::parse_float, py::arg("name"), py::arg("value"), py::arg("max"));
  t.def("parse_choice", &settings::parse_choice, py::arg("name"), py::arg("value"), py::arg("choices"));
}
