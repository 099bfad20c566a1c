#include <pthread.h>
#include <sys/stat.h>

#include <cstring>
#include <mutex>

#include "fastsafetensors/device_error.hpp"
#include "fastsafetensors/shim/cufile.hpp"
#include "fastsafetensors/shim/dlopen.hpp"

namespace fst::shim {
namespace {

std::mutex g_mutex;
// A child forked while another thread held the lock would find it held forever: it is held across
// fork() instead (a fork waits for a first driver open in progress to finish).
[[maybe_unused]] const int g_fork_guard =
    ::pthread_atfork([] { g_mutex.lock(); }, [] { g_mutex.unlock(); }, [] { g_mutex.unlock(); });
bool g_tried = false;
bool g_loaded = false;
CuFile g_cf;
std::string g_error;       // why the library could not be loaded
std::string g_open_error;  // why the driver did not open (raised on every use)

void load_locked() {
  g_tried = true;
  LoadedLibrary lib = load_library({"libcufile.so.0", "libcufile.so"});
  if (lib.handle == nullptr) {
    g_error = "libcufile.so.0 could not be loaded: " + lib.errors;
    return;
  }
  std::string missing;
  void* h = lib.handle;
  bool ok = bind(h, "cuFileDriverOpen", g_cf.DriverOpen, missing) &&
            bind(h, "cuFileDriverGetProperties", g_cf.DriverGetProperties, missing) &&
            bind(h, "cuFileHandleRegister", g_cf.HandleRegister, missing) &&
            bind(h, "cuFileHandleDeregister", g_cf.HandleDeregister, missing) &&
            bind(h, "cuFileBufRegister", g_cf.BufRegister, missing) &&
            bind(h, "cuFileBufDeregister", g_cf.BufDeregister, missing) && bind(h, "cuFileRead", g_cf.Read, missing);
  if (!ok) {
    g_error = lib.path + " lacks " + missing;
    return;
  }
  std::string optional;
  if (!bind(h, "cuFileDriverClose_v2", g_cf.DriverClose, optional))
    bind(h, "cuFileDriverClose", g_cf.DriverClose, optional);
  g_cf.library = lib.path;
  g_loaded = true;
  CUfileError_t e = g_cf.DriverOpen();
  if (e.err != 0) {
    g_open_error = "cuFileDriverOpen failed with cuFile error " + std::to_string(e.err) + " (CUDA " +
                   std::to_string(e.cu_err) + "); load with nogds=True";
    return;
  }
  alignas(16) unsigned char props[1024];
  std::memset(props, 0, sizeof(props));
  CUfileNvfsProps nvfs{};
  if (g_cf.DriverGetProperties(props).err == 0) std::memcpy(&nvfs, props, sizeof(nvfs));
  struct stat st;
  bool nvfs_loaded = ::stat("/proc/driver/nvidia-fs/version", &st) == 0;
  g_cf.compat_mode = nvfs.major_version == 0 || !nvfs_loaded;
  if (nvfs.max_direct_io_size != 0 && nvfs.max_direct_io_size < (size_t{1} << 30)) {
    g_cf.max_direct_io = nvfs.max_direct_io_size * 1024;
  }
}

}  // namespace

const CuFile* cufile() {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!g_tried) load_locked();
  if (!g_loaded) return nullptr;
  if (!g_open_error.empty()) throw GdsError(g_open_error);
  return &g_cf;
}

std::string cufile_error() {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!g_tried) load_locked();
  return g_loaded ? g_open_error : g_error;
}

void cufile_check(CUfileError_t e, const std::string& what) {
  if (e.err == 0) return;
  throw GdsError(what + ": cuFile error " + std::to_string(e.err) + " (CUDA " + std::to_string(e.cu_err) + ")");
}

}  // namespace fst::shim
