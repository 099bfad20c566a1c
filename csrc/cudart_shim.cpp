#include <mutex>

#include "fastsafetensors/device_error.hpp"
#include "fastsafetensors/shim/cudart.hpp"
#include "fastsafetensors/shim/dlopen.hpp"

namespace fst::shim {
namespace {

std::once_flag g_once;
CudaRuntime g_rt;
bool g_ok = false;
std::string g_error;

void load() {
  LoadedLibrary lib = load_library({"libcudart.so.13", "libcudart.so.12", "libcudart.so"});
  if (lib.handle == nullptr) {
    g_error = "no CUDA runtime (libcudart.so.13 or .so.12) could be loaded: " + lib.errors +
              ". Install a CUDA build of torch, jax or cupy, or the nvidia-cuda-runtime package";
    return;
  }
  std::string missing;
  void* h = lib.handle;
  bool ok = bind(h, "cudaGetDeviceCount", g_rt.GetDeviceCount, missing) &&
            bind(h, "cudaSetDevice", g_rt.SetDevice, missing) &&
            bind(h, "cudaDeviceGetPCIBusId", g_rt.DeviceGetPCIBusId, missing) &&
            bind(h, "cudaGetErrorString", g_rt.GetErrorString, missing) &&
            bind(h, "cudaMalloc", g_rt.Malloc, missing) && bind(h, "cudaFree", g_rt.Free, missing) &&
            bind(h, "cudaHostAlloc", g_rt.HostAlloc, missing) && bind(h, "cudaFreeHost", g_rt.FreeHost, missing) &&
            bind(h, "cudaHostRegister", g_rt.HostRegister, missing) &&
            bind(h, "cudaHostUnregister", g_rt.HostUnregister, missing) &&
            bind(h, "cudaMemcpyAsync", g_rt.MemcpyAsync, missing) &&
            bind(h, "cudaMemcpy2DAsync", g_rt.Memcpy2DAsync, missing) &&
            bind(h, "cudaStreamCreateWithFlags", g_rt.StreamCreateWithFlags, missing) &&
            bind(h, "cudaStreamDestroy", g_rt.StreamDestroy, missing) &&
            bind(h, "cudaStreamSynchronize", g_rt.StreamSynchronize, missing) &&
            bind(h, "cudaEventCreateWithFlags", g_rt.EventCreateWithFlags, missing) &&
            bind(h, "cudaEventDestroy", g_rt.EventDestroy, missing) &&
            bind(h, "cudaEventRecord", g_rt.EventRecord, missing) &&
            bind(h, "cudaEventSynchronize", g_rt.EventSynchronize, missing);
  if (!ok) {
    g_error = lib.path + " lacks " + missing;
    return;
  }
  g_rt.library = lib.path;
  g_ok = true;
}

}  // namespace

const CudaRuntime* cuda_runtime() noexcept {
  std::call_once(g_once, load);
  return g_ok ? &g_rt : nullptr;
}

std::string cuda_runtime_error() {
  std::call_once(g_once, load);
  return g_error;
}

void cuda_check(cudaError_t err, const std::string& what) {
  if (err == cudaSuccess) return;
  const CudaRuntime* rt = cuda_runtime();
  std::string msg = rt ? rt->GetErrorString(err) : "CUDA error";
  throw DeviceError(what + ": " + msg + " (CUDA error " + std::to_string(err) + ")");
}

}  // namespace fst::shim
