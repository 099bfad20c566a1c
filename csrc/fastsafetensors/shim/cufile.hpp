// The cuFile (GPU Direct Storage) entry points the engine uses, declared here and resolved from
// libcufile.so.0 with dlopen at run time. The driver is opened once per process, on first use.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace fst::shim {

struct CUfileError_t {
  int err;     // CUfileOpError; 0 is success
  int cu_err;  // CUresult of a driver call that failed underneath
};

using CUfileHandle_t = void*;

struct CUfileDescr_t {
  int type;  // CU_FILE_HANDLE_TYPE_OPAQUE_FD
  union {
    int fd;
    void* handle;
  } handle;
  const void* fs_ops;
};
inline constexpr int CU_FILE_HANDLE_TYPE_OPAQUE_FD = 1;

// The leading fields of CUfileDrvProps_t; the engine passes a larger zeroed block.
struct CUfileNvfsProps {
  unsigned major_version;  // of the nvidia-fs kernel driver; 0 when it is not loaded
  unsigned minor_version;
  size_t poll_thresh_size;
  size_t max_direct_io_size;  // KiB
  unsigned dstatusflags;
  unsigned dcontrolflags;
};

struct CuFile {
  CUfileError_t (*DriverOpen)();
  CUfileError_t (*DriverClose)();  // may be null (newer libraries name it cuFileDriverClose_v2)
  CUfileError_t (*DriverGetProperties)(void* props);
  CUfileError_t (*HandleRegister)(CUfileHandle_t*, CUfileDescr_t*);
  void (*HandleDeregister)(CUfileHandle_t);
  CUfileError_t (*BufRegister)(const void*, size_t, int);
  CUfileError_t (*BufDeregister)(const void*);
  ssize_t (*Read)(CUfileHandle_t, void*, size_t, off_t, off_t);
  std::string library;
  bool compat_mode = false;  // no nvidia-fs driver: cuFile reads through host bounce buffers
  size_t max_direct_io = 16u << 20;
};

// The process-wide cuFile library with its driver opened; nullptr when libcufile cannot be
// loaded (cufile_error() says why). Throws GdsError when the library loads but the driver does
// not open.
const CuFile* cufile();
std::string cufile_error();

// Throws GdsError("<what>: cuFile error N") unless e reports success.
void cufile_check(CUfileError_t e, const std::string& what);

}  // namespace fst::shim
