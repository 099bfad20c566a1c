#include "fastsafetensors/cold_reads.hpp"

#include <sys/sysmacros.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <mutex>

#include "fastsafetensors/detail/checked.hpp"
#include "fastsafetensors/detail/mapped_file.hpp"
#include "fastsafetensors/error.hpp"
#include "fastsafetensors/settings.hpp"

namespace fst {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;
// Requests below 1 MiB pay a system call and a bounce copy per little data; above 16 MiB a
// thread waits for its whole request before copying any of it.
constexpr uint64_t kMinRequest = kMiB;
constexpr uint64_t kMaxRequest = 16 * kMiB;
// Device requests kept in flight, never more than the queue's nr_requests: a solid-state device
// serves many at once. A rotating disk gets half as many: those in flight lie within a few windows
// of the file (each stream's readahead, or O_DIRECT reads taken in order) that the elevator sorts
// into sweeps, but a deeper queue only widens the windows (and the seeks between their ends).
constexpr uint64_t kRotatingInFlight = 16;
constexpr uint64_t kSolidInFlight = 32;
// Requests in flight (O_DIRECT: bounce buffers) stay under this much memory.
constexpr uint64_t kMaxInFlightBytes = 128 * kMiB;
// The bounce buffers' alignment (host_reader.cpp): a device with larger blocks is read buffered, and
// the load says why (ColdShape::direct_refusal).
// O_DIRECT is not the rule's default: a cold load through the page cache leaves the checkpoint
// there for the next load (a restarted server, another rank), and the kernel's readahead adds
// requests in flight beyond the threads'; on the project's VM fastsafetensors 0.5.0 read cold
// files faster buffered than with O_DIRECT (docs/benchmarks.md). A host that must not cache the
// checkpoint asks for it.
constexpr uint64_t kDirectAlignment = 4096;
// Without a queue to read (tmpfs, overlay, NFS, FUSE): 0.5.0's buffered shape, which keeps a
// network file system's requests in flight.
constexpr unsigned kFallbackDepth = 16;
constexpr uint64_t kFallbackRequest = 16 * kMiB;
// Pages of each step of the file asked about (resident_steps).
constexpr uint64_t kSamplesPerStep = 4;

// A sysfs attribute as a number, or `fallback` when the file is missing or holds no number.
uint64_t read_number(const std::string& path, uint64_t fallback) {
  std::ifstream in(path);
  uint64_t v = 0;
  return in >> v ? v : fallback;
}

// The queue directory of device `dev`: its own, or for a partition its disk's (the parent).
std::string queue_dir(const std::string& sysfs_root, uint64_t dev) {
  std::string base = sysfs_root + "/dev/block/" + std::to_string(major(dev)) + ":" + std::to_string(minor(dev));
  for (const std::string& dir : {base + "/queue", base + "/../queue"}) {
    if (std::ifstream(dir + "/max_sectors_kb").good()) return dir;
  }
  return {};
}

bool direct_asked() { return settings::get_bool("FASTSAFETENSORS_COLD_ODIRECT", false); }

// The name of the driver behind queue directory `dir` (its device's `driver` link), or empty.
std::string driver_of(const std::string& dir) {
  std::unique_ptr<char, void (*)(void*)> path(::realpath((dir + "/../device/driver").c_str(), nullptr), &std::free);
  if (path == nullptr) return {};
  std::string p(path.get());
  return p.substr(p.rfind('/') + 1);
}

ColdShape with_overrides(ColdShape s) {
  // 0 (the default) leaves the rule's value; 256 is settings.py's MAX_THREADS.
  uint64_t threads = settings::get_uint("FASTSAFETENSORS_COLD_THREADS", 0, 256);
  uint64_t request_kb = settings::get_uint("FASTSAFETENSORS_COLD_REQUEST_KB", 0, uint64_t{1} << 20);
  if (threads != 0) s.queue_depth = static_cast<unsigned>(threads);
  if (request_kb != 0) s.request_bytes = request_kb << 10;
  if (threads != 0 || request_kb != 0 || s.direct_asked) s.rule += "; overridden by the environment";
  return s;
}

}  // namespace

ColdShape cold_shape_from_limits(const QueueLimits& q, bool direct) {
  ColdShape s;
  s.direct_asked = direct;
  uint64_t max_request = q.max_sectors_kb << 10;
  uint64_t request = detail::align_up(std::max(max_request, q.optimal_io_size), kDirectAlignment);
  s.request_bytes = std::clamp(request, kMinRequest, kMaxRequest);
  // Each read is split into requests of at most max_sectors_kb, all sent at once.
  uint64_t per_read = max_request == 0 ? 1 : std::max<uint64_t>(1, s.request_bytes / max_request);
  uint64_t in_flight = q.rotational ? kRotatingInFlight : kSolidInFlight;
  if (q.nr_requests != 0) in_flight = std::min(in_flight, q.nr_requests);
  if (q.logical_block_size > kDirectAlignment) {
    s.direct_refusal = "its logical block size is " + std::to_string(q.logical_block_size) +
                       " bytes, larger than the " + std::to_string(kDirectAlignment) +
                       "-byte alignment of the O_DIRECT bounce buffers";
  }
  s.direct = direct && s.direct_refusal.empty();
  // A buffered stream keeps its readahead window in flight (read_ahead_kb, doubled by
  // POSIX_FADV_SEQUENTIAL) or its own read, whichever is more requests: on a device with a large
  // window a few streams fill the queue, where as many threads sharing one descriptor in turn
  // leave the readahead nothing sequential to follow (issue 14, the project's VM: 0.70-0.75 GB/s in
  // turn against 0.89-0.95 in 8 streams).
  s.streams = !s.direct;
  uint64_t window = 2 * (q.read_ahead_kb << 10);
  uint64_t per_stream = s.streams && max_request != 0 ? std::max(per_read, window / max_request) : per_read;
  uint64_t depth = std::max<uint64_t>(2, in_flight / per_stream);
  s.queue_depth = static_cast<unsigned>(std::min(depth, std::max<uint64_t>(2, kMaxInFlightBytes / s.request_bytes)));
  s.rule = std::string(q.rotational ? "rotational" : "solid-state") + ", nr_requests " +
           std::to_string(q.nr_requests) + ", max_sectors_kb " + std::to_string(q.max_sectors_kb) +
           ", optimal_io_size " + std::to_string(q.optimal_io_size) + ", logical_block_size " +
           std::to_string(q.logical_block_size) + ", read_ahead_kb " + std::to_string(q.read_ahead_kb);
  return s;
}

ColdShape cold_shape_for_device(const std::string& sysfs_root, uint64_t dev) {
  std::string dir = queue_dir(sysfs_root, dev);
  if (dir.empty()) {
    ColdShape s;
    s.queue_depth = kFallbackDepth;
    s.request_bytes = kFallbackRequest;
    s.direct_asked = direct_asked();
    s.direct = s.direct_asked;
    s.rule = "fallback: no block queue for device " + std::to_string(major(dev)) + ":" + std::to_string(minor(dev));
    return with_overrides(s);
  }
  QueueLimits q;
  q.rotational = read_number(dir + "/rotational", 0) != 0;
  // virtio_blk reports every disk rotational: it cannot know the host's medium, which is seldom a
  // lone rotating disk, so the flag says nothing and the disk counts as solid-state.
  bool virtio = q.rotational && driver_of(dir) == "virtio_blk";
  q.rotational = q.rotational && !virtio;
  q.nr_requests = read_number(dir + "/nr_requests", 0);
  q.max_sectors_kb = read_number(dir + "/max_sectors_kb", 0);
  q.optimal_io_size = read_number(dir + "/optimal_io_size", 0);
  q.logical_block_size = read_number(dir + "/logical_block_size", 512);
  q.read_ahead_kb = read_number(dir + "/read_ahead_kb", 0);
  ColdShape s = cold_shape_from_limits(q, direct_asked());
  s.rule = dir + ": " + (virtio ? "rotational as virtio_blk reports every disk, taken as " : "") + s.rule;
  return with_overrides(s);
}

namespace {
std::mutex g_sysfs_mutex;
std::string g_sysfs_root = "/sys";
}  // namespace

std::string sysfs_root() {
  std::lock_guard<std::mutex> lock(g_sysfs_mutex);
  return g_sysfs_root;
}

void set_sysfs_root(const std::string& root) {
  std::lock_guard<std::mutex> lock(g_sysfs_mutex);
  g_sysfs_root = root.empty() ? "/sys" : root;
}

namespace {

// Which `granule`-byte steps of a file are resident, asked only about the steps in `read` (the
// others count resident), or empty when the file cannot be mapped. A step is resident when every
// sampled page of it is: asking mincore about every page costs ~45 ms a GB (a seventh of a hot load
// on the project's VM), while page-cache residency comes in runs of at least the readahead window,
// so a few pages per step tell. Only the steps read: a load that reads a 4 MiB piece of a 10 GB
// file at a time (staged layout transforms) would otherwise pay the whole file each time.
std::vector<bool> resident_steps(const File& f, uint64_t granule, const std::vector<bool>& read, uint64_t& asked) {
  uint64_t size = f.size();
  std::unique_ptr<detail::MappedFile> map;
  try {
    map = std::make_unique<detail::MappedFile>(f.fd(), size, f.path());
  } catch (const ReadError&) {
    return {};
  }
  std::vector<bool> steps((size + granule - 1) / granule, true);
  std::vector<unsigned char> page;
  for (uint64_t step = 0; step < std::min(steps.size(), read.size()); ++step) {
    if (!read[step]) continue;
    ++asked;
    bool resident = true;
    for (uint64_t at = step * granule; resident && at < std::min(size, (step + 1) * granule);
         at += granule / kSamplesPerStep) {
      map->resident_pages(at, 1, page);
      resident = (page[0] & 1) != 0;
    }
    steps[step] = resident;
  }
  return steps;
}

// The steps of each file that `ranges` touch (none for a file they do not read).
std::vector<std::vector<bool>> steps_read(const std::vector<File>& files, const std::vector<ReadRange>& ranges,
                                          uint64_t granule) {
  std::vector<std::vector<bool>> out(files.size());
  for (const ReadRange& r : ranges) {
    if (r.length == 0) continue;
    std::vector<bool>& s = out[r.file];
    if (s.empty()) s.resize((files[r.file].size() + granule - 1) / granule, false);
    uint64_t stop = std::min<uint64_t>(s.size(), (r.file_offset + r.length - 1) / granule + 1);
    for (uint64_t step = r.file_offset / granule; step < stop; ++step) s[step] = true;
  }
  return out;
}

}  // namespace

ResidencySplit split_by_residency(const std::vector<File>& files, const std::vector<ReadRange>& ranges,
                                  uint64_t granule) {
  std::vector<std::vector<bool>> steps(files.size());
  const std::vector<std::vector<bool>> read = steps_read(files, ranges, granule);
  ResidencySplit out;
  bool any_cold = false;
  for (size_t f = 0; f < files.size(); ++f) {
    if (!read[f].empty()) steps[f] = resident_steps(files[f], granule, read[f], out.steps_asked);
    any_cold = any_cold || std::find(steps[f].begin(), steps[f].end(), false) != steps[f].end();
  }
  if (!any_cold) {
    out.all_resident = true;  // the common hot load: no copy of what may be millions of ranges
    return out;
  }
  for (const ReadRange& r : ranges) {
    const std::vector<bool>& s = steps[r.file];
    auto resident_at = [&](uint64_t offset) { return offset / granule >= s.size() || s[offset / granule]; };
    // The range cut where the residency of its steps changes.
    for (uint64_t at = r.file_offset, end = r.file_offset + r.length; at < end;) {
      bool resident = resident_at(at);
      uint64_t stop = std::min(end, (at / granule + 1) * granule);
      while (stop < end && resident_at(stop) == resident) stop = std::min(end, stop + granule);
      ReadRange piece = r;
      piece.file_offset = at;
      piece.length = stop - at;
      piece.dst_offset = r.dst_offset + (at - r.file_offset);
      (resident ? out.resident : out.cold).push_back(piece);
      at = stop;
    }
  }
  return out;
}

}  // namespace fst
