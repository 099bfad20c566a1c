// Each area of the engine binds itself in its own file; bindings.cpp calls them in order.
#pragma once

#include <pybind11/pybind11.h>

namespace fst::python {

// Raises the fastsafetensors.errors class `name`(message, **extra) as the current Python error.
void raise_python(const char* name, const std::string& message, const pybind11::dict& extra);

// The GPU path: devices, device buffers, the device reader (bind_device.cpp).
void bind_device(pybind11::module_& m);

}  // namespace fst::python
