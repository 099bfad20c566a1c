// Executes read plans into device memory. The plan's bytes are cut on a grid of file blocks
// and handed out from both ends of one queue:
//  - staging lanes take blocks from the front: pread into one of their pinned slots, then an
//    asynchronous copy on the lane's own stream, so the next read overlaps the copy;
//  - mapping lanes take groups of blocks from the back: the file's page-cache pages are
//    registered in place (mmap + cudaHostRegister ReadOnly) and DMA'd without a CPU copy.
// The two paths are limited by different resources (host copy bandwidth vs. page registration),
// and where they meet in the queue is set by how fast each one actually goes. Files mostly out
// of the page cache are staged only (registration would fault pages in one by one), or read
// with cuFile (GPU Direct Storage) when asked for. Every byte lands or read() throws, naming the
// file and offset; nothing is in flight when it returns either way.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "fastsafetensors/device.hpp"
#include "fastsafetensors/host_reader.hpp"
#include "fastsafetensors/numa.hpp"
#include "fastsafetensors/read_plan.hpp"
#include "fastsafetensors/thread_pool.hpp"

namespace fst {

enum class GdsMode {
  Off,     // never cuFile
  Auto,    // cuFile for files mostly outside the page cache, staging/mapping for the others
  Direct,  // cuFile for every file
};

struct DeviceReadOptions {
  bool use_mapping = true;               // let the mapping lanes take blocks of cached files
  bool stage_cached = true;              // let the staging lanes take them too (off: mapping only)
  uint64_t map_group_bytes = 64u << 20;  // bytes registered at once by a mapping lane
  double warm_fraction = 0.9;            // resident share above which a file counts as cached
  GdsMode gds = GdsMode::Off;
  uint64_t gds_register_bytes = 256u << 20;  // largest destination span one cuFileBufRegister covers
};

struct DeviceReadStats {
  uint64_t bytes = 0;
  uint64_t staged_bytes = 0;
  uint64_t mapped_bytes = 0;
  uint64_t gds_bytes = 0;
  uint32_t cached_files = 0;
  uint32_t gds_files = 0;
  bool gds_compat = false;       // cuFile ran without the nvidia-fs driver (through host buffers)
  std::string mapping_disabled;  // why the mapping lanes stopped early, if they did
  int numa_node = -1;            // the GPU's NUMA node where the lanes were pinned to it, else -1
  std::vector<int> numa_cpus;    // the CPUs they were pinned to (empty: left alone)
  double seconds = 0;
};

class DeviceReader {
 public:
  // `threads` staging lanes sharing `staging_bytes` of pinned memory (two slots each; fewer
  // lanes when the staging memory is too small for them), plus `map_lanes` mapping lanes.
  // With `numa`, the lanes run on the CPUs of the device's NUMA node (found under `sysfs_root`)
  // while they read, so the staging slots they first touch are that node's memory too.
  DeviceReader(std::shared_ptr<Device> device, unsigned threads, uint64_t staging_bytes, unsigned map_lanes = 2,
               bool numa = true, const std::string& sysfs_root = kDefaultSysfsRoot);
  ~DeviceReader();
  DeviceReader(const DeviceReader&) = delete;
  DeviceReader& operator=(const DeviceReader&) = delete;

  unsigned staging_lanes() const noexcept { return static_cast<unsigned>(lanes_.size()); }
  unsigned map_lanes() const noexcept { return map_lanes_; }
  uint64_t slot_bytes() const noexcept { return slot_bytes_; }
  const std::shared_ptr<Device>& device() const noexcept { return device_; }
  // Where the lanes run: the device's node and CPUs, or why they are left alone.
  const NumaPlacement& placement() const noexcept { return placement_; }
  // The CPUs each lane (staging lanes, then mapping lanes) was allowed to run on during the
  // last read, as the lane's thread saw them; empty for a lane that did not run.
  std::vector<std::vector<int>> worker_cpus();

  // Reads every range into dsts[range.dst] + range.dst_offset (device addresses).
  DeviceReadStats read(const std::vector<ReadSource>& sources, const std::vector<ReadRange>& ranges,
                       const std::vector<uint8_t*>& dsts, const std::vector<uint64_t>& dst_sizes,
                       const DeviceReadOptions& options);

  // A staging slot: pinned memory, and the event marking when its last copy has left it.
  struct Slot {
    uint8_t* memory = nullptr;
    Device::Event copied = nullptr;
    bool pending = false;
    size_t block = 0;  // the block whose bytes it holds, for error messages
  };
  struct Lane {
    Device::Stream stream = nullptr;
    Slot slots[2];
  };
  struct Job;

 private:
  void ensure_resources();
  void run_staging_lane(Job& job, Lane& lane);
  void run_map_lane(Job& job, unsigned index);

  std::shared_ptr<Device> device_;
  uint64_t slot_bytes_;
  unsigned map_lanes_;
  std::vector<Lane> lanes_;
  std::vector<Device::Stream> map_streams_;
  bool resources_ready_ = false;
  NumaPlacement placement_;
  std::vector<std::vector<int>> worker_cpus_;
  std::mutex read_mutex_;  // one read at a time: lanes own their slots
  ThreadPool pool_;
};

}  // namespace fst
