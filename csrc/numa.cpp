#include "fastsafetensors/numa.hpp"

#include <sched.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <memory>

namespace fst {
namespace {

// Linux supports at most 8192 CPUs (CONFIG_NR_CPUS); larger numbers are not CPUs.
constexpr int kMaxCpus = 8192;
constexpr int kMaxNodes = 1 << 10;  // CONFIG_NODES_SHIFT is at most 10
constexpr std::streamsize kMaxFileBytes = 1 << 20;

// A sysfs attribute's text without its trailing newline; nullopt when it cannot be read.
std::optional<std::string> read_attribute(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::string text(kMaxFileBytes, '\0');
  in.read(&text[0], kMaxFileBytes);
  if (in.bad()) return std::nullopt;
  text.resize(static_cast<size_t>(in.gcount()));
  if (!text.empty() && text.back() == '\n') text.pop_back();
  return text;
}

// A decimal number in [0, limit) spanning text[pos, end); advances pos. False if malformed.
bool parse_number(const std::string& text, size_t& pos, size_t end, int limit, int& out) {
  size_t start = pos;
  long value = 0;
  while (pos < end && text[pos] >= '0' && text[pos] <= '9') {
    value = value * 10 + (text[pos] - '0');
    if (value >= limit) return false;
    ++pos;
  }
  out = static_cast<int>(value);
  return pos > start;
}

// Hex digits only, between 1 and max_digits of them.
bool parse_hex(const std::string& s, size_t max_digits, unsigned long& out) {
  if (s.empty() || s.size() > max_digits) return false;
  out = 0;
  for (char c : s) {
    int d = c >= '0' && c <= '9'   ? c - '0'
            : c >= 'a' && c <= 'f' ? c - 'a' + 10
            : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                   : -1;
    if (d < 0) return false;
    out = out * 16 + static_cast<unsigned long>(d);
  }
  return true;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> parts(1);
  for (char c : s) {
    if (c == sep) {
      parts.emplace_back();
    } else {
      parts.back() += c;
    }
  }
  return parts;
}

// A CPU mask wide enough for the kernel's CPU count, allocated with CPU_ALLOC.
struct CpuMask {
  explicit CpuMask(int cpus) : count(cpus), set(CPU_ALLOC(cpus)), bytes(CPU_ALLOC_SIZE(cpus)) {
    if (set != nullptr) CPU_ZERO_S(bytes, set);
  }
  ~CpuMask() { CPU_FREE(set); }
  CpuMask(const CpuMask&) = delete;
  CpuMask& operator=(const CpuMask&) = delete;

  int count;
  cpu_set_t* set;
  size_t bytes;
};

}  // namespace

std::optional<std::vector<int>> parse_cpulist(const std::string& text) {
  std::string s = text;
  if (!s.empty() && s.back() == '\n') s.pop_back();
  std::vector<int> cpus;
  if (s.empty()) return cpus;  // a node with memory and no CPUs
  size_t pos = 0;
  while (true) {
    int lo = 0, hi = 0;
    if (!parse_number(s, pos, s.size(), kMaxCpus, lo)) return std::nullopt;
    hi = lo;
    if (pos < s.size() && s[pos] == '-') {
      ++pos;
      if (!parse_number(s, pos, s.size(), kMaxCpus, hi) || hi < lo) return std::nullopt;
    }
    for (int c = lo; c <= hi; ++c) cpus.push_back(c);
    if (pos == s.size()) break;
    if (s[pos] != ',') return std::nullopt;
    ++pos;
  }
  std::sort(cpus.begin(), cpus.end());
  cpus.erase(std::unique(cpus.begin(), cpus.end()), cpus.end());
  return cpus;
}

std::optional<std::string> normalize_pci_bus_id(const std::string& bus_id) {
  std::vector<std::string> parts = split(bus_id, ':');
  if (parts.size() == 2) parts.insert(parts.begin(), "0");
  if (parts.size() != 3) return std::nullopt;
  std::vector<std::string> slot = split(parts[2], '.');
  unsigned long domain = 0, bus = 0, device = 0, function = 0;
  if (slot.size() != 2 || !parse_hex(parts[0], 8, domain) || !parse_hex(parts[1], 2, bus) ||
      !parse_hex(slot[0], 2, device) || !parse_hex(slot[1], 1, function) || device >= 32 || function >= 8) {
    return std::nullopt;
  }
  char out[32];
  std::snprintf(out, sizeof out, "%04lx:%02lx:%02lx.%lx", domain, bus, device, function);
  return std::string(out);
}

int pci_numa_node(const std::string& bus_id, const std::string& sysfs_root) {
  std::optional<std::string> id = normalize_pci_bus_id(bus_id);
  if (!id) return -1;
  std::optional<std::string> text = read_attribute(sysfs_root + "/bus/pci/devices/" + *id + "/numa_node");
  if (!text) return -1;
  size_t pos = 0;
  int node = -1;
  // "-1" (firmware gave no locality) and anything malformed both mean unknown.
  if (!parse_number(*text, pos, text->size(), kMaxNodes, node) || pos != text->size()) return -1;
  return node;
}

std::optional<std::vector<int>> numa_node_cpus(int node, const std::string& sysfs_root) {
  if (node < 0) return std::nullopt;
  std::optional<std::string> text =
      read_attribute(sysfs_root + "/devices/system/node/node" + std::to_string(node) + "/cpulist");
  if (!text) return std::nullopt;
  return parse_cpulist(*text);
}

std::vector<int> thread_cpus() noexcept try {
  // The mask must cover every CPU the kernel knows of, or the call fails with EINVAL.
  for (int width = 1024; width <= kMaxCpus; width *= 2) {
    CpuMask mask(width);
    if (mask.set == nullptr) return {};
    if (sched_getaffinity(0, mask.bytes, mask.set) != 0) {
      if (errno == EINVAL) continue;
      return {};
    }
    std::vector<int> cpus;
    for (int c = 0; c < width; ++c) {
      if (CPU_ISSET_S(c, mask.bytes, mask.set)) cpus.push_back(c);
    }
    return cpus;
  }
  return {};
} catch (...) {  // out of memory for the list: report the affinity as unknown
  return {};
}

bool set_thread_cpus(const std::vector<int>& cpus) noexcept {
  if (cpus.empty()) return false;
  CpuMask mask(*std::max_element(cpus.begin(), cpus.end()) + 1);
  if (mask.set == nullptr) return false;
  for (int c : cpus) CPU_SET_S(c, mask.bytes, mask.set);
  return sched_setaffinity(0, mask.bytes, mask.set) == 0;
}

NumaPlacement numa_placement(const std::string& bus_id, const std::vector<int>& allowed,
                             const std::string& sysfs_root) {
  NumaPlacement p;
  if (bus_id.empty()) {
    p.reason = "the device reports no PCI bus id";
    return p;
  }
  std::optional<std::string> id = normalize_pci_bus_id(bus_id);
  if (!id) {
    p.reason = "'" + bus_id + "' is not a PCI bus id";
    return p;
  }
  p.bus_id = *id;
  std::optional<std::string> online_text = read_attribute(sysfs_root + "/devices/system/node/online");
  std::optional<std::vector<int>> online = online_text ? parse_cpulist(*online_text) : std::nullopt;
  if (!online || online->size() < 2) {
    p.reason = online ? "one NUMA node" : "the NUMA nodes are unknown";
    return p;
  }
  p.node = pci_numa_node(*id, sysfs_root);
  if (p.node < 0) {
    p.reason = "the GPU's NUMA node is unknown";
    return p;
  }
  std::optional<std::vector<int>> node_cpus = numa_node_cpus(p.node, sysfs_root);
  if (!node_cpus) {
    p.reason = "the CPUs of node " + std::to_string(p.node) + " are unknown";
    return p;
  }
  std::vector<int> usable = allowed;
  std::sort(usable.begin(), usable.end());
  std::set_intersection(node_cpus->begin(), node_cpus->end(), usable.begin(), usable.end(),
                        std::back_inserter(p.cpus));
  if (p.cpus.empty()) {
    p.reason = "this process may run on none of node " + std::to_string(p.node) + "'s CPUs";
  } else if (p.cpus == usable) {
    p.cpus.clear();
    p.reason = "this process already runs on node " + std::to_string(p.node) + "'s CPUs only";
  }
  return p;
}

ScopedThreadPlacement::ScopedThreadPlacement(const std::vector<int>& cpus) noexcept {
  if (cpus.empty()) return;
  std::vector<int> before = thread_cpus();
  if (!before.empty() && set_thread_cpus(cpus)) previous_ = std::move(before);
}

ScopedThreadPlacement::~ScopedThreadPlacement() {
  if (!previous_.empty()) set_thread_cpus(previous_);
}

}  // namespace fst
