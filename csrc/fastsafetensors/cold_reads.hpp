// Reads of bytes that are not in the page cache, shaped for the block device that holds them.
// Page-cache reads are bound by memory bandwidth and want few threads and large copies; reads from
// a device are bound by how many requests it has in flight and how large they are. A load asks
// mincore which ranges are resident (split_by_residency) and reads the others with the shape the
// device's queue limits give (cold_shape_for_device), docs/usage.md "Cold reads".
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "fastsafetensors/file.hpp"
#include "fastsafetensors/read_plan.hpp"

namespace fst {

struct ColdShape {
  unsigned queue_depth = 0;    // reads kept in flight (reader threads), or streams
  uint64_t request_bytes = 0;  // bytes per read
  // Buffered: each thread reads its own contiguous part of the cold bytes, in file order, through
  // descriptors of its own, so the kernel's readahead keeps each stream's next requests in flight.
  // O_DIRECT (no readahead): the threads take the next request in file order, one after another.
  bool streams = false;
  bool direct = false;        // O_DIRECT (FASTSAFETENSORS_COLD_ODIRECT=1 only: see cold_reads.cpp)
  bool direct_asked = false;  // FASTSAFETENSORS_COLD_ODIRECT=1
  // Why O_DIRECT cannot be used (the device's blocks, or the file system refusing it: read_cold),
  // or empty. Asked for and refused, the bytes are read through the page cache and the caller says so.
  std::string direct_refusal;
  std::string rule;  // what chose it: the sysfs values, or why the fallback
};

// How one device's cold bytes were read (HostReader::read_cold): `shape.direct` is whether
// O_DIRECT was used.
struct ColdDeviceRead {
  uint64_t device = 0;  // st_dev
  std::string path;     // the first file read from it, to name it
  uint64_t bytes = 0;
  ColdShape shape;
};

// The queue limits of a block device, as /sys/dev/block/MAJ:MIN/queue states them.
struct QueueLimits {
  bool rotational = false;
  uint64_t nr_requests = 0;
  uint64_t max_sectors_kb = 0;
  uint64_t optimal_io_size = 0;
  uint64_t logical_block_size = 0;
  uint64_t read_ahead_kb = 0;
};

// The rule itself (docs/usage.md): a pure function of the limits and whether the reads are
// O_DIRECT, tested without a device.
ColdShape cold_shape_from_limits(const QueueLimits& q, bool direct);
// The shape for device `dev` (a file's st_dev) from the sysfs tree under `sysfs_root` ("/sys"; a
// partition's limits are its disk's). Without a queue to read (tmpfs, overlay, NFS, a missing
// tree) the documented fallback. FASTSAFETENSORS_COLD_THREADS, FASTSAFETENSORS_COLD_REQUEST_KB and
// FASTSAFETENSORS_COLD_ODIRECT override what they name.
ColdShape cold_shape_for_device(const std::string& sysfs_root, uint64_t dev);
// The sysfs tree loads read queue limits from: "/sys", or a test's fake tree
// (_cpp.testing.set_sysfs_root; an empty root restores "/sys").
std::string sysfs_root();
void set_sysfs_root(const std::string& root);

// A plan's ranges cut where page-cache residency changes, at `granule`-byte steps of the file: a
// step counts resident when 4 pages spread evenly over it (from its start) are.
// A file that cannot be mapped counts resident: it is read as before the split existed.
struct ResidencySplit {
  bool all_resident = false;  // every step of every file read is resident: both lists stay empty
  uint64_t steps_asked = 0;   // steps whose residency was sampled (those the ranges touch)
  std::vector<ReadRange> resident;
  std::vector<ReadRange> cold;
};
ResidencySplit split_by_residency(const std::vector<File>& files, const std::vector<ReadRange>& ranges,
                                  uint64_t granule);

}  // namespace fst
