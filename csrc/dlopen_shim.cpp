#include "fastsafetensors/shim/dlopen.hpp"

#include <dlfcn.h>
#include <pthread.h>

#include <fstream>
#include <mutex>

namespace fst::shim {
namespace {
std::mutex g_dirs_mutex;
std::vector<std::string> g_dirs;
// A child forked while another thread held the lock would find it held forever: it is held across
// fork() instead (its critical sections are short).
[[maybe_unused]] const int g_fork_guard =
    ::pthread_atfork([] { g_dirs_mutex.lock(); }, [] { g_dirs_mutex.unlock(); }, [] { g_dirs_mutex.unlock(); });
}  // namespace

void add_search_dirs(const std::vector<std::string>& dirs) {
  std::lock_guard<std::mutex> lock(g_dirs_mutex);
  for (const auto& d : dirs) g_dirs.push_back(d);
}

namespace {

// A loaded library whose file name starts with `stem` (e.g. "libcudart"): wheels that vendor
// CUDA rename it (libcudart-<hash>.so.12), so asking for the plain soname would miss it.
std::string loaded_path(const std::string& stem) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    size_t slash = line.rfind('/');
    if (slash == std::string::npos) continue;
    std::string base = line.substr(slash + 1);
    // "libcudart.so.13" or "libcudart-1a2b3c.so.12", not "libcufile_rdma.so.1" for "libcufile".
    bool named = base.compare(0, stem.size(), stem) == 0 && base.size() > stem.size() &&
                 (base[stem.size()] == '.' || base[stem.size()] == '-');
    if (named && base.find(".so") != std::string::npos) {
      return line.substr(line.find('/'));
    }
  }
  return {};
}

}  // namespace

LoadedLibrary load_library(const std::vector<std::string>& sonames) {
  LoadedLibrary out;
  // A copy a framework already loaded: sharing it keeps one runtime per process.
  for (const auto& name : sonames) {
    if (void* h = ::dlopen(name.c_str(), RTLD_NOW | RTLD_NOLOAD | RTLD_GLOBAL)) {
      out.handle = h;
      out.path = name + " (already loaded)";
      return out;
    }
  }
  std::string stem = sonames.front().substr(0, sonames.front().find(".so"));
  std::string mapped = loaded_path(stem);
  if (!mapped.empty()) {
    if (void* h = ::dlopen(mapped.c_str(), RTLD_NOW | RTLD_NOLOAD | RTLD_GLOBAL)) {
      out.handle = h;
      out.path = mapped + " (already loaded)";
      return out;
    }
  }
  std::vector<std::string> dirs;
  {
    std::lock_guard<std::mutex> lock(g_dirs_mutex);
    dirs = g_dirs;
  }
  std::vector<std::string> candidates;
  for (const auto& name : sonames) {
    for (const auto& d : dirs) candidates.push_back(d + "/" + name);
  }
  for (const auto& name : sonames) candidates.push_back(name);
  for (const auto& c : candidates) {
    ::dlerror();
    if (void* h = ::dlopen(c.c_str(), RTLD_NOW | RTLD_GLOBAL)) {
      out.handle = h;
      out.path = c;
      return out;
    }
    const char* e = ::dlerror();
    if (c.find('/') == std::string::npos) out.errors += std::string(e ? e : c.c_str()) + "; ";
  }
  if (!dirs.empty()) out.errors += "also looked in " + std::to_string(dirs.size()) + " nvidia package folder(s)";
  return out;
}

bool resolve(void* lib, const char* name, void** fn, std::string& missing) {
  *fn = ::dlsym(lib, name);
  if (*fn == nullptr) {
    missing = name;
    return false;
  }
  return true;
}

}  // namespace fst::shim
