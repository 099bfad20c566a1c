// Finding a shared library the way a CUDA application would, without linking to it: the copy
// already in the process first (by soname, or any mapped file of that name, e.g. a wheel's
// vendored libcudart-<hash>.so.12), then the `nvidia` pip packages' lib folders, then the
// loader's search path.
#pragma once

#include <string>
#include <vector>

namespace fst::shim {

struct LoadedLibrary {
  void* handle = nullptr;
  std::string path;    // what was opened
  std::string errors;  // why each candidate failed, when handle is null
};

// Extra folders to try after the copies already in the process (the Python side passes the lib
// folders of the `nvidia` pip packages it finds on sys.path).
void add_search_dirs(const std::vector<std::string>& dirs);

// Tries each soname in order (e.g. {"libcudart.so.13", "libcudart.so.12", "libcudart.so"}).
LoadedLibrary load_library(const std::vector<std::string>& sonames);

// Resolves `name` in `lib` into `fn`; false (and `missing` gets the name) when absent.
bool resolve(void* lib, const char* name, void** fn, std::string& missing);

// resolve() into a typed function pointer.
template <typename Fn>
bool bind(void* lib, const char* name, Fn& fn, std::string& missing) {
  void* p = nullptr;
  bool ok = resolve(lib, name, &p, missing);
  fn = reinterpret_cast<Fn>(p);
  return ok;
}

}  // namespace fst::shim
