// Each area of the engine binds itself in its own file; bindings.cpp calls them in order.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "fastsafetensors/header.hpp"
#include "fastsafetensors/host_reader.hpp"
#include "fastsafetensors/numa.hpp"
#include "fastsafetensors/read_plan.hpp"

// Vectors Python sees by reference instead of converting to lists: range lists can hold millions
// of runs, and a header's tensors are looked at without copying them.
PYBIND11_MAKE_OPAQUE(std::vector<fst::ReadRange>);
PYBIND11_MAKE_OPAQUE(std::vector<fst::TensorInfo>);

namespace fst::python {

// Raises the fastsafetensors.errors class `name`(message, **extra) as the current Python error.
void raise_python(const char* name, const std::string& message, const pybind11::dict& extra);

// What HostReader::read (and read_strided) did, as Python sees it: {'bytes', 'reads', 'gap_bytes',
// 'populated', 'cold_bytes', 'bytes_per_file'}.
pybind11::dict read_stats_dict(const ReadStats& stats);

// `testing` is the engine's testing submodule: bindings only tests and benchmarks use go there.
void bind_integrity(pybind11::module_& m, pybind11::module_& testing);
void bind_host_cache(pybind11::module_& m);
// Strided placement of boxes for layout transforms (bind_placement.cpp); after HostReader.
void bind_placement(pybind11::module_& m);
// Fault injection and the settings parsers, into the testing submodule `t`.
void bind_testing(pybind11::module_& t);
// The GPU path: devices, device buffers, the device reader (bind_device.cpp).
void bind_device(pybind11::module_& m, pybind11::module_& testing);
// NUMA lookups (bind_numa.cpp); placement_dict is how a placement reaches Python.
void bind_numa(pybind11::module_& m, pybind11::module_& testing);
pybind11::dict placement_dict(const NumaPlacement& p);

}  // namespace fst::python
