// Errors of the GPU path. The bindings raise them as fastsafetensors.errors.CudaError and
// GdsError (both RuntimeError); a GdsError's message always contains "gds", which callers of
// the 0.3 API catch to retry with nogds=True.
#pragma once

#include <stdexcept>
#include <string>

namespace fst {

// A CUDA runtime call failed, or no runtime could be loaded.
class DeviceError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class GdsError : public std::runtime_error {
 public:
  explicit GdsError(const std::string& message) : std::runtime_error("gds: " + message) {}
};

}  // namespace fst
