// The few CUDA runtime entry points the engine uses, declared here and resolved with dlopen at
// run time: the package builds without CUDA and loads on machines without it. The runtime a
// framework (torch, JAX, CuPy) already loaded is preferred, so the process shares one copy.
#pragma once

#include <cstddef>
#include <string>

namespace fst::shim {

using cudaError_t = int;
using cudaStream_t = void*;
using cudaEvent_t = void*;

inline constexpr cudaError_t cudaSuccess = 0;
inline constexpr cudaError_t cudaErrorNotReady = 600;
inline constexpr unsigned cudaHostAllocPortable = 0x01;
inline constexpr unsigned cudaHostRegisterPortable = 0x01;
inline constexpr unsigned cudaHostRegisterReadOnly = 0x08;
inline constexpr unsigned cudaStreamNonBlocking = 0x01;
inline constexpr unsigned cudaEventDisableTiming = 0x02;
inline constexpr int cudaMemcpyHostToDevice = 1;

// Function pointers into one loaded libcudart.
struct CudaRuntime {
  cudaError_t (*GetDeviceCount)(int*);
  cudaError_t (*SetDevice)(int);
  cudaError_t (*DeviceGetPCIBusId)(char*, int, int);
  const char* (*GetErrorString)(cudaError_t);
  cudaError_t (*Malloc)(void**, size_t);
  cudaError_t (*Free)(void*);
  cudaError_t (*HostAlloc)(void**, size_t, unsigned);
  cudaError_t (*FreeHost)(void*);
  cudaError_t (*HostRegister)(void*, size_t, unsigned);
  cudaError_t (*HostUnregister)(void*);
  cudaError_t (*MemcpyAsync)(void*, const void*, size_t, int, cudaStream_t);
  cudaError_t (*Memcpy2DAsync)(void*, size_t, const void*, size_t, size_t, size_t, int, cudaStream_t);
  cudaError_t (*StreamCreateWithFlags)(cudaStream_t*, unsigned);
  cudaError_t (*StreamDestroy)(cudaStream_t);
  cudaError_t (*StreamSynchronize)(cudaStream_t);
  cudaError_t (*EventCreateWithFlags)(cudaEvent_t*, unsigned);
  cudaError_t (*EventDestroy)(cudaEvent_t);
  cudaError_t (*EventRecord)(cudaEvent_t, cudaStream_t);
  cudaError_t (*EventSynchronize)(cudaEvent_t);
  std::string library;  // the file it came from, for messages
};

// The process-wide runtime, loaded on first use; nullptr when none can be loaded, in which case
// cuda_runtime_error() says what was tried and why it failed.
const CudaRuntime* cuda_runtime() noexcept;
std::string cuda_runtime_error();

// Throws DeviceError("<what>: <CUDA's message>") unless err is cudaSuccess.
void cuda_check(cudaError_t err, const std::string& what);

}  // namespace fst::shim
