#include "fastsafetensors/device_reader.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <stdexcept>

#include "fastsafetensors/detail/mapped_file.hpp"
#include "fastsafetensors/device_error.hpp"
#include "fastsafetensors/error.hpp"
#include "fastsafetensors/file.hpp"
#include "fastsafetensors/shim/cufile.hpp"

namespace fst {
namespace {

constexpr uint64_t kMinSlot = 4096;
constexpr uint64_t kMaxSlot = uint64_t{64} << 20;

enum class Route : uint8_t { Gds, Staged, Cached };  // queue order: front to back

struct Piece {
  uint32_t file;
  uint32_t dst;
  uint64_t file_offset;
  uint64_t length;
  uint64_t dst_offset;
};

// The pieces of one file inside one cell of the block grid. Cells are page-aligned and
// disjoint, so two blocks never share a page: mapping lanes may register them concurrently.
struct Block {
  uint32_t file;
  Route route;
  uint64_t lo, hi;  // file bytes the pieces cover (lo..hi fits one staging slot)
  size_t first, count;
};

// Pieces of a block at most this far apart in the file are read by one pread, the bytes between
// them landing in the slot unused; farther apart, each is read by its own pread. From the page
// cache a pread costs about 1 us besides its copy, and copying 4 KiB about as much (the host
// reader's ReadOptions::max_gap rule). Measured for a column shard's rows (32 MiB span, 2-vCPU VM):
// 1 KiB rows 8 KiB apart, 4096 preads took 4.5 ms, reading the span whole 7 ms; 4 KiB apart,
// 8.2 ms against 6.7 ms. Either way the slot holds every byte at its position in the file, so
// evenly spaced rows sit in it at the file's stride, the source pitch of their 2D copy; packing
// the rows together instead would cost a host copy and save the copy engine nothing.
constexpr uint64_t kReadThroughGap = 4096;

uint64_t page_floor(uint64_t v) { return v / detail::page_size() * detail::page_size(); }
uint64_t page_ceil(uint64_t v) { return page_floor(v + detail::page_size() - 1); }

unsigned lanes_for(unsigned threads, uint64_t staging_bytes) {
  unsigned lanes = std::max(1u, threads);
  uint64_t fit = staging_bytes / (2 * kMinSlot);
  return static_cast<unsigned>(std::max<uint64_t>(1, std::min<uint64_t>(lanes, fit)));
}

uint64_t slot_for(unsigned lanes, uint64_t staging_bytes) {
  uint64_t slot = staging_bytes / (2 * uint64_t{lanes}) / kMinSlot * kMinSlot;
  return std::clamp(slot, kMinSlot, kMaxSlot);
}

// Cuts ranges on the grid (file offsets in multiples of `cell`; for cuFile files also
// destination offsets in multiples of `dst_chunk`) and groups them into blocks, ordered
// GDS files first, then staged-only files, then cached files (which mapping lanes take).
void make_blocks(std::vector<ReadRange> ranges, const std::vector<Route>& routes,
                 const std::vector<uint64_t>& file_sizes, uint64_t cell, uint64_t dst_chunk,
                 std::vector<Piece>& pieces, std::vector<Block>& blocks) {
  std::sort(ranges.begin(), ranges.end(), [](const ReadRange& a, const ReadRange& b) {
    return a.file != b.file ? a.file < b.file : a.file_offset < b.file_offset;
  });
  pieces.clear();
  for (const ReadRange& r : ranges) {
    for (uint64_t done = 0; done < r.length;) {
      uint64_t at = r.file_offset + done;
      uint64_t n = std::min(r.length - done, (at / cell + 1) * cell - at);
      if (routes[r.file] == Route::Gds) {
        uint64_t d = r.dst_offset + done;
        n = std::min(n, (d / dst_chunk + 1) * dst_chunk - d);
      }
      pieces.push_back({r.file, r.dst, at, n, r.dst_offset + done});
      done += n;
    }
  }
  // Pieces are in (file, offset) order; consecutive pieces of one file and cell form a block.
  blocks.clear();
  for (size_t i = 0; i < pieces.size();) {
    const Piece& p = pieces[i];
    uint64_t hi = p.file_offset + p.length;
    size_t j = i + 1;
    while (j < pieces.size() && pieces[j].file == p.file && pieces[j].file_offset / cell == p.file_offset / cell) {
      hi = std::max(hi, pieces[j].file_offset + pieces[j].length);
      ++j;
    }
    // Bytes past the end of the file cannot be mapped: staging reads report the truncation.
    Route route = routes[p.file] == Route::Cached && hi > file_sizes[p.file] ? Route::Staged : routes[p.file];
    blocks.push_back({p.file, route, p.file_offset, hi, i, j - i});
    i = j;
  }
  std::stable_sort(blocks.begin(), blocks.end(), [](const Block& a, const Block& b) { return a.route < b.route; });
}

// How many pieces from pieces[i] (of [i, end)) one 2D copy moves: the same destination and
// length, the file and destination offsets each advancing by one step no shorter than a piece
// (what plan_boxes gives for a column shard). 1: the piece is copied alone.
size_t rows_from(const std::vector<Piece>& pieces, size_t i, size_t end) {
  const Piece& p = pieces[i];
  if (i + 1 >= end) return 1;
  const Piece& q = pieces[i + 1];
  if (q.dst != p.dst || q.length != p.length || q.dst_offset < p.dst_offset + p.length) return 1;
  uint64_t file_step = q.file_offset - p.file_offset, dst_step = q.dst_offset - p.dst_offset;
  if (file_step < p.length || file_step > kMaxCopyPitch || dst_step > kMaxCopyPitch) return 1;
  size_t rows = 2;
  for (; i + rows < end; ++rows) {
    const Piece& r = pieces[i + rows];
    const Piece& before = pieces[i + rows - 1];
    if (r.dst != p.dst || r.length != p.length || r.file_offset - before.file_offset != file_step ||
        r.dst_offset - before.dst_offset != dst_step) {
      break;
    }
  }
  return rows;
}

// Queues the copies of pieces [first, end) of one file, whose bytes are at src + (file offset -
// base): one 2D copy per run of evenly spaced pieces, one copy per other piece. Thousands of rows
// of a column shard become a few copies. Returns the bytes queued.
uint64_t queue_copies(Device& device, const std::vector<Piece>& pieces, size_t first, size_t end, const uint8_t* src,
                      uint64_t base, const std::vector<uint8_t*>& dsts, Device::Stream stream) {
  uint64_t bytes = 0;
  for (size_t i = first; i < end;) {
    const Piece& p = pieces[i];
    size_t rows = rows_from(pieces, i, end);
    uint8_t* dst = dsts[p.dst] + p.dst_offset;
    const uint8_t* from = src + (p.file_offset - base);
    if (rows == 1) {
      device.copy_to_device_async(dst, from, p.length, stream);
    } else {
      const Piece& q = pieces[i + 1];
      device.copy_2d_to_device_async(dst, q.dst_offset - p.dst_offset, from, q.file_offset - p.file_offset, p.length,
                                     rows, stream);
    }
    bytes += rows * p.length;
    i += rows;
  }
  return bytes;
}

// cuFile handles and registered destination spans of one read, released however it ends.
struct GdsSession {
  const shim::CuFile* cf = nullptr;
  std::vector<File> direct_files;             // O_DIRECT descriptors the handles use
  std::vector<shim::CUfileHandle_t> handles;  // per plan file, null when not read by cuFile
  std::vector<void*> registered;

  // Registers file f with cuFile; false when its file system has no O_DIRECT (read it buffered).
  bool open(size_t f, const File& checked) {
    try {
      direct_files.emplace_back(checked.path(), true);
    } catch (const ReadError&) {
      return false;
    }
    // Opened again by path: it must still be the file that `checked` (checked against its header) reads.
    direct_files.back().check_identity(checked.identity());
    shim::CUfileDescr_t descr{};
    descr.type = shim::CU_FILE_HANDLE_TYPE_OPAQUE_FD;
    descr.handle.fd = direct_files.back().fd();
    shim::cufile_check(cf->HandleRegister(&handles[f], &descr), "cuFileHandleRegister of " + checked.path());
    return true;
  }

  // Registers each destination cuFile writes to, in spans of at most `chunk` bytes.
  void register_destinations(const std::vector<Block>& blocks, const std::vector<Piece>& pieces,
                             const std::vector<uint8_t*>& dsts, const std::vector<uint64_t>& sizes, uint64_t chunk) {
    std::vector<bool> used(dsts.size(), false);
    for (const Block& b : blocks) {
      if (b.route != Route::Gds) continue;
      for (size_t i = b.first; i < b.first + b.count; ++i) used[pieces[i].dst] = true;
    }
    for (size_t d = 0; d < dsts.size(); ++d) {
      for (uint64_t off = 0; used[d] && off < sizes[d]; off += chunk) {
        uint64_t n = std::min(chunk, sizes[d] - off);
        shim::cufile_check(cf->BufRegister(dsts[d] + off, n, 0),
                           "cuFileBufRegister of " + std::to_string(n) + " device bytes");
        registered.push_back(dsts[d] + off);
      }
    }
  }

  // Reads one piece straight into device memory; `chunk` is the registration span size.
  void read(const File& file, size_t f, const Piece& p, uint8_t* dst, uint64_t chunk) const {
    uint64_t base = p.dst_offset / chunk * chunk;
    for (uint64_t done = 0; done < p.length;) {
      uint64_t at = p.file_offset + done;
      ssize_t n = cf->Read(handles[f], dst + base, p.length - done, static_cast<off_t>(at),
                           static_cast<off_t>(p.dst_offset - base + done));
      if (n < 0) {
        throw GdsError(file.path() + ": cuFileRead at offset " + std::to_string(at) + " failed (" + std::to_string(n) +
                       "); load with nogds=True");
      }
      if (n == 0) {
        throw ReadError(file.path(), at, 0, true,
                        file.path() + ": file ended at offset " + std::to_string(at) +
                            " (it was truncated or replaced after its header was read)");
      }
      done += static_cast<uint64_t>(n);
    }
  }

  ~GdsSession() {
    if (cf == nullptr) return;
    for (void* p : registered) cf->BufDeregister(p);
    for (void* h : handles) {
      if (h != nullptr) cf->HandleDeregister(h);
    }
  }
};

}  // namespace

struct DeviceReader::Job {
  const std::vector<File>* files = nullptr;
  const std::vector<uint8_t*>* dsts = nullptr;
  std::vector<std::unique_ptr<detail::MappedFile>> maps;
  std::vector<Piece> pieces;
  std::vector<Block> blocks;
  const DeviceReadOptions* options = nullptr;
  GdsSession gds;
  uint64_t gds_chunk = 0;

  std::mutex mutex;
  std::condition_variable cv;
  size_t front = 0, back = 0;
  std::vector<size_t> returned;  // blocks a mapping lane gave back to the staging lanes
  unsigned active_map = 0;
  bool mapping_off = false;
  std::string mapping_disabled;
  std::atomic<bool> cancel{false};
  std::exception_ptr error;
  std::atomic<uint64_t> staged{0}, mapped{0}, gds_bytes{0};

  const std::string& path(uint32_t file) const { return (*files)[file].path(); }

  void fail(std::exception_ptr e) {
    std::lock_guard<std::mutex> lock(mutex);
    if (!error) error = e;
    cancel = true;
    cv.notify_all();
  }

  // The next block for a staging lane; waits while mapping lanes may still give blocks back.
  bool take_front(size_t& out) {
    std::unique_lock<std::mutex> lock(mutex);
    while (true) {
      if (cancel) return false;
      if (!returned.empty()) {
        out = returned.back();
        returned.pop_back();
        return true;
      }
      // With staging of cached files off, cached blocks wait for the mapping lanes while any run.
      if (front < back && (options->stage_cached || blocks[front].route != Route::Cached || active_map == 0)) {
        out = front++;
        return true;
      }
      if (active_map == 0 && front >= back) return false;
      cv.wait(lock);
    }
  }

  // Blocks [first, last] of one cached file from the back, spanning at most `span` bytes.
  bool take_back(uint64_t span, size_t& first, size_t& last) {
    std::lock_guard<std::mutex> lock(mutex);
    if (cancel || mapping_off || front >= back || blocks[back - 1].route != Route::Cached) return false;
    last = back - 1;
    first = last;
    while (first > front && blocks[first - 1].route == Route::Cached && blocks[first - 1].file == blocks[last].file &&
           blocks[last].hi - blocks[first - 1].lo <= span) {
      --first;
    }
    back = first;
    return true;
  }

  // Files outside the page cache: while lanes read block b, the disk is already asked for the
  // block a round of lanes later, so it sees a deep queue of large requests.
  void prefetch_ahead(size_t b, size_t distance) const {
    size_t ahead = b + distance;
    if (ahead >= blocks.size() || blocks[b].route != Route::Staged || blocks[ahead].route != Route::Staged) return;
    const Block& blk = blocks[ahead];
    (*files)[blk.file].prefetch(blk.lo, blk.hi - blk.lo);
  }

  void give_back(size_t first, size_t last, const std::string& why) {
    std::lock_guard<std::mutex> lock(mutex);
    for (size_t b = first; b <= last; ++b) returned.push_back(b);
    if (!mapping_off) mapping_disabled = why;
    mapping_off = true;
    cv.notify_all();
  }

  void map_lane_done() {
    std::lock_guard<std::mutex> lock(mutex);
    --active_map;
    cv.notify_all();
  }

  // Re-throws a failed copy with the file and offset of the bytes it carried.
  [[noreturn]] void copy_failed(const DeviceError& e, size_t block) const {
    const Block& b = blocks[block];
    throw DeviceError(path(b.file) + ": copying the bytes at offset " + std::to_string(b.lo) +
                      " to the device failed: " + e.what());
  }
};

DeviceReader::DeviceReader(std::shared_ptr<Device> device, unsigned threads, uint64_t staging_bytes,
                           unsigned map_lanes, bool numa, const std::string& sysfs_root)
    : device_(std::move(device)),
      slot_bytes_(slot_for(lanes_for(threads, staging_bytes), staging_bytes)),
      map_lanes_(map_lanes),
      lanes_(lanes_for(threads, staging_bytes)),
      pool_(lanes_for(threads, staging_bytes) + map_lanes) {
  if (numa) {
    placement_ = numa_placement(device_->pci_bus_id(), thread_cpus(), sysfs_root);
  } else {
    placement_.reason = "turned off";
  }
}

std::vector<std::vector<int>> DeviceReader::worker_cpus() {
  std::lock_guard<std::mutex> serial(read_mutex_);
  return worker_cpus_;
}

DeviceReader::~DeviceReader() {
  for (Lane& lane : lanes_) {
    if (lane.stream != nullptr) {
      try {
        device_->sync_stream(lane.stream);
      } catch (...) {
      }
    }
    for (Slot& s : lane.slots) {
      if (s.copied != nullptr) device_->destroy_event(s.copied);
      if (s.memory != nullptr) device_->free_pinned(s.memory);
    }
    if (lane.stream != nullptr) device_->destroy_stream(lane.stream);
  }
  for (Device::Stream s : map_streams_) device_->destroy_stream(s);
}

void DeviceReader::ensure_resources() {
  if (resources_ready_) return;
  device_->bind_thread();
  // Kept from load to load; the pinned slots are allocated by their lanes, in parallel.
  for (Lane& lane : lanes_) {
    if (lane.stream == nullptr) lane.stream = device_->create_stream();
    for (Slot& s : lane.slots) {
      if (s.copied == nullptr) s.copied = device_->create_event();
    }
  }
  while (map_streams_.size() < map_lanes_) map_streams_.push_back(device_->create_stream());
  resources_ready_ = true;
}

void DeviceReader::run_staging_lane(Job& job, Lane& lane) {
  const auto& dsts = *job.dsts;
  unsigned k = 0;  // slots are used in turn: slots[k % 2] is the older one
  try {
    device_->bind_thread();
    size_t b = 0;
    while (job.take_front(b)) {
      // Pinning costs about as much as copying: a lane pins its slots once, when first needed.
      for (Slot& s : lane.slots) {
        if (s.memory == nullptr) s.memory = static_cast<uint8_t*>(device_->alloc_pinned(slot_bytes_));
      }
      const Block& blk = job.blocks[b];
      const File& file = (*job.files)[blk.file];
      if (blk.route == Route::Gds) {
        for (size_t i = blk.first; i < blk.first + blk.count; ++i) {
          const Piece& p = job.pieces[i];
          job.gds.read(file, blk.file, p, dsts[p.dst], job.gds_chunk);
          job.gds_bytes += p.length;
        }
        continue;
      }
      job.prefetch_ahead(b, lanes_.size());
      Slot& slot = lane.slots[k++ % 2];
      if (slot.pending) {
        slot.pending = false;
        try {
          device_->sync_event(slot.copied);
        } catch (const DeviceError& e) {
          job.copy_failed(e, slot.block);
        }
      }
      // Pieces are in file order: read pieces at most kReadThroughGap apart with one pread.
      size_t end = blk.first + blk.count;
      for (size_t i = blk.first; i < end;) {
        uint64_t lo = job.pieces[i].file_offset, hi = lo + job.pieces[i].length;
        size_t j = i + 1;
        while (j < end && job.pieces[j].file_offset <= hi + kReadThroughGap) {
          hi = std::max(hi, job.pieces[j].file_offset + job.pieces[j].length);
          ++j;
        }
        file.read_exact(slot.memory + (lo - blk.lo), hi - lo, lo);
        i = j;
      }
      job.staged += queue_copies(*device_, job.pieces, blk.first, end, slot.memory, blk.lo, dsts, lane.stream);
      device_->record_event(slot.copied, lane.stream);
      slot.pending = true;
      slot.block = b;
    }
  } catch (...) {
    job.fail(std::current_exception());
  }
  // Nothing may still be copying out of the slots when the read returns, error or not. The
  // older slot is waited for first, so a failure is reported with the bytes it carried.
  for (unsigned i = 0; i < 2; ++i) {
    Slot& slot = lane.slots[(k + i) % 2];
    if (!slot.pending) continue;
    slot.pending = false;
    try {
      try {
        device_->sync_event(slot.copied);
      } catch (const DeviceError& e) {
        job.copy_failed(e, slot.block);
      }
    } catch (...) {
      job.fail(std::current_exception());
    }
  }
  try {
    device_->sync_stream(lane.stream);  // copies queued before a failure cut a block short
  } catch (...) {
    job.fail(std::current_exception());
  }
}

void DeviceReader::run_map_lane(Job& job, unsigned index) {
  const auto& dsts = *job.dsts;
  Device::Stream stream = map_streams_[index];
  struct Group {
    void* base = nullptr;
    size_t first = 0;
    Device::Event done = nullptr;
  } groups[2];
  std::vector<Device::Event> events;
  try {
    device_->bind_thread();
    for (Group& g : groups) {
      g.done = device_->create_event();
      events.push_back(g.done);
    }
    unsigned k = 0;
    size_t first = 0, last = 0;
    while (job.take_back(job.options->map_group_bytes, first, last)) {
      Group& g = groups[k++ % 2];
      if (g.base != nullptr) {
        void* base = g.base;
        g.base = nullptr;
        try {
          device_->sync_event(g.done);
        } catch (const DeviceError& e) {
          device_->unregister_host(base);
          job.copy_failed(e, g.first);
        }
        device_->unregister_host(base);
      }
      const Block& a = job.blocks[first];
      const Block& z = job.blocks[last];
      const uint8_t* map = job.maps[a.file]->data();
      uint64_t lo = page_floor(a.lo), hi = page_ceil(z.hi);
      void* base = const_cast<uint8_t*>(map + lo);
      try {
        device_->register_host(base, hi - lo, true);
      } catch (const DeviceError& e) {
        // Registration is an optimisation: hand the blocks to the staging lanes instead.
        job.give_back(first, last, e.what());
        break;
      }
      g.base = base;
      g.first = first;
      // Blocks of one file taken together hold consecutive pieces, so rows run on across blocks.
      job.mapped += queue_copies(*device_, job.pieces, a.first, z.first + z.count, map, 0, dsts, stream);
      device_->record_event(g.done, stream);
    }
  } catch (...) {
    job.fail(std::current_exception());
  }
  try {
    device_->sync_stream(stream);
  } catch (const DeviceError& e) {
    try {
      job.copy_failed(e, groups[0].base ? groups[0].first : groups[1].first);
    } catch (...) {
      job.fail(std::current_exception());
    }
  } catch (...) {
    job.fail(std::current_exception());
  }
  for (Group& g : groups) {
    if (g.base != nullptr) device_->unregister_host(g.base);
  }
  for (Device::Event e : events) device_->destroy_event(e);
  job.map_lane_done();
}

DeviceReadStats DeviceReader::read(const std::vector<ReadSource>& sources, const std::vector<ReadRange>& ranges,
                                   const std::vector<uint8_t*>& dsts, const std::vector<uint64_t>& dst_sizes,
                                   const DeviceReadOptions& options) {
  std::lock_guard<std::mutex> serial(read_mutex_);
  auto t0 = std::chrono::steady_clock::now();
  if (dsts.size() != dst_sizes.size()) throw std::invalid_argument("one size per destination");
  if (options.map_group_bytes == 0 || options.gds_register_bytes == 0) {
    throw std::invalid_argument("group and registration sizes must be positive");
  }
  check_ranges(ranges, sources.size(), dst_sizes);
  ensure_resources();
  std::vector<File> files = open_sources(sources, false);

  Job job;
  job.files = &files;
  job.dsts = &dsts;
  job.options = &options;
  job.gds_chunk = options.gds_register_bytes;
  job.maps.resize(files.size());
  DeviceReadStats stats;

  // Which bytes of each file the plan reads, to ask the page cache about those only.
  std::vector<uint64_t> lo(files.size(), UINT64_MAX), hi(files.size(), 0);
  for (const ReadRange& r : ranges) {
    if (r.length == 0) continue;
    lo[r.file] = std::min(lo[r.file], r.file_offset);
    hi[r.file] = std::max(hi[r.file], r.file_offset + r.length);
  }
  bool mapping = options.use_mapping && map_lanes_ > 0;
  if (options.gds != GdsMode::Off) {
    job.gds.cf = shim::cufile();
    if (job.gds.cf == nullptr) throw GdsError("cuFile is unavailable: " + shim::cufile_error());
    stats.gds_compat = job.gds.cf->compat_mode;
    job.gds.handles.assign(files.size(), nullptr);
  }
  std::vector<Route> routes(files.size(), Route::Staged);
  for (size_t f = 0; f < files.size(); ++f) {
    if (hi[f] == 0) continue;
    bool cached = false;
    if (mapping || options.gds == GdsMode::Auto) {
      job.maps[f] = std::make_unique<detail::MappedFile>(files[f].fd(), files[f].size(), files[f].path());
      cached = job.maps[f]->resident_fraction(lo[f], hi[f] - lo[f]) >= options.warm_fraction;
    }
    stats.cached_files += cached;
    bool gds = options.gds == GdsMode::Direct || (options.gds == GdsMode::Auto && !cached);
    if (gds && job.gds.open(f, files[f])) {
      routes[f] = Route::Gds;
      ++stats.gds_files;
    } else if (cached && mapping) {
      routes[f] = Route::Cached;
    }
  }
  std::vector<uint64_t> sizes;
  for (const ReadSource& src : sources) sizes.push_back(src.expected_size);
  make_blocks(ranges, routes, sizes, slot_bytes_, job.gds_chunk, job.pieces, job.blocks);
  if (stats.gds_files > 0 && !job.gds.cf->compat_mode) {
    job.gds.register_destinations(job.blocks, job.pieces, dsts, dst_sizes, job.gds_chunk);
  }
  job.back = job.blocks.size();
  bool any_cached =
      std::any_of(job.blocks.begin(), job.blocks.end(), [](const Block& b) { return b.route == Route::Cached; });
  unsigned map_tasks = mapping && any_cached ? map_lanes_ : 0;
  job.active_map = map_tasks;
  worker_cpus_.assign(lanes_.size() + map_lanes_, {});
  pool_.parallel_for(lanes_.size() + map_tasks, [&](unsigned, size_t task) {
    // Placed before a lane first touches its staging slots; the calling thread, which runs a
    // lane too, gets its own affinity back afterwards.
    ScopedThreadPlacement placed(placement_.cpus);
    worker_cpus_[task] = thread_cpus();
    if (task < lanes_.size()) {
      run_staging_lane(job, lanes_[task]);
    } else {
      run_map_lane(job, static_cast<unsigned>(task - lanes_.size()));
    }
  });
  if (job.error) std::rethrow_exception(job.error);
  stats.staged_bytes = job.staged;
  stats.mapped_bytes = job.mapped;
  stats.gds_bytes = job.gds_bytes;
  stats.bytes = stats.staged_bytes + stats.mapped_bytes + stats.gds_bytes;
  stats.mapping_disabled = job.mapping_disabled;
  if (!placement_.cpus.empty()) {
    stats.numa_node = placement_.node;
    stats.numa_cpus = placement_.cpus;
  }
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return stats;
}

}  // namespace fst
