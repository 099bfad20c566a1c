// Where a GPU sits in the machine's NUMA topology, read from sysfs (no libnuma): the node its
// PCI device hangs off, and that node's CPUs this process may run on. The GPU reader pins its
// threads there so the pinned staging memory they first touch lands on the GPU's node and the
// host-to-device copies do not cross the socket interconnect. Every lookup fails soft: a file
// missing or malformed means "unknown", and unknown means "leave the threads alone".
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace fst {

inline constexpr const char* kDefaultSysfsRoot = "/sys";

// Parses a kernel CPU list ("0-3,8-11", "5", "" for a node without CPUs; one trailing newline
// allowed) into sorted, distinct CPU numbers. Anything else (stray characters, reversed or
// open ranges, empty items, numbers past the largest CPU Linux supports) gives nullopt.
std::optional<std::vector<int>> parse_cpulist(const std::string& text);

// "0000:3B:00.0", "00000000:3b:00.0" (NVML's 8-digit domain) or "3b:00.0" in the form sysfs
// names devices: "0000:3b:00.0". nullopt when it is not a PCI bus id.
std::optional<std::string> normalize_pci_bus_id(const std::string& bus_id);

// The NUMA node of PCI device `bus_id` (<root>/bus/pci/devices/<id>/numa_node); -1 when unknown.
int pci_numa_node(const std::string& bus_id, const std::string& sysfs_root = kDefaultSysfsRoot);

// CPUs of NUMA node `node` (<root>/devices/system/node/node<N>/cpulist); nullopt when unknown.
std::optional<std::vector<int>> numa_node_cpus(int node, const std::string& sysfs_root = kDefaultSysfsRoot);

// CPUs the calling thread may run on (sched_getaffinity); empty if the call fails.
std::vector<int> thread_cpus() noexcept;
// Restricts the calling thread to `cpus`; false (affinity unchanged) if the kernel refuses.
bool set_thread_cpus(const std::vector<int>& cpus) noexcept;

// Where a reader feeding the GPU `bus_id` should run: `cpus` is the node's CPUs intersected
// with `allowed`, empty when the threads are to be left alone, and `reason` then says why.
struct NumaPlacement {
  std::string bus_id;     // as sysfs names it; empty when the device reported none
  int node = -1;          // the GPU's node, -1 unknown
  std::vector<int> cpus;  // where to pin; empty: do not pin
  std::string reason;     // why not pinning ("" when pinning)
};
NumaPlacement numa_placement(const std::string& bus_id, const std::vector<int>& allowed,
                             const std::string& sysfs_root = kDefaultSysfsRoot);

// Restricts the calling thread to a placement's CPUs for its lifetime and gives it back the
// affinity it had (the calling thread of a read is the caller's own). Does nothing for an
// empty CPU set or where the kernel refuses.
class ScopedThreadPlacement {
 public:
  explicit ScopedThreadPlacement(const std::vector<int>& cpus) noexcept;
  ~ScopedThreadPlacement();
  ScopedThreadPlacement(const ScopedThreadPlacement&) = delete;
  ScopedThreadPlacement& operator=(const ScopedThreadPlacement&) = delete;

 private:
  std::vector<int> previous_;  // empty: nothing to restore
};

}  // namespace fst
