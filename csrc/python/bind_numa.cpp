// Bindings of the NUMA lookups (numa.hpp): where a GPU sits, and the calling thread's CPUs.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings.hpp"
#include "fastsafetensors/numa.hpp"

namespace py = pybind11;

py::dict fst::python::placement_dict(const NumaPlacement& p) {
  py::dict d;
  d["bus_id"] = p.bus_id;
  d["node"] = p.node;
  d["cpus"] = p.cpus;
  d["reason"] = p.reason;
  return d;
}

void fst::python::bind_numa(py::module_& m, py::module_& t) {
  m.def("pci_numa_node", &pci_numa_node, py::arg("bus_id"), py::arg("sysfs_root") = kDefaultSysfsRoot,
        "The NUMA node of a PCI device; -1 when unknown.");
  // Only tests call the others (the device reader uses them in C++).
  t.def("parse_cpulist", &parse_cpulist, py::arg("text"),
        "A kernel CPU list ('0-3,8-11') as sorted CPU numbers; None when malformed.");
  t.def("normalize_pci_bus_id", &normalize_pci_bus_id, py::arg("bus_id"),
        "A PCI bus id as sysfs names it ('0000:3b:00.0'); None when it is not one.");
  t.def("numa_node_cpus", &numa_node_cpus, py::arg("node"), py::arg("sysfs_root") = kDefaultSysfsRoot,
        "The CPUs of a NUMA node; None when unknown.");
  t.def(
      "numa_placement",
      [](const std::string& bus_id, const std::vector<int>& allowed, const std::string& sysfs_root) {
        return placement_dict(numa_placement(bus_id, allowed, sysfs_root));
      },
      py::arg("bus_id"), py::arg("allowed"), py::arg("sysfs_root") = kDefaultSysfsRoot,
      "Where threads feeding the GPU `bus_id` should run: {bus_id, node, cpus (empty: leave them), reason}.");
}
