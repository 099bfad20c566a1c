#include "fastsafetensors/host_reader.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <stdexcept>

#include "fastsafetensors/cold_reads.hpp"
#include "fastsafetensors/detail/checked.hpp"
#include "fastsafetensors/detail/populate.hpp"
#include "fastsafetensors/error.hpp"
#include "fastsafetensors/file.hpp"

namespace fst {
namespace {

constexpr uint64_t kDirectAlignment = 4096;
// Residency is asked per step of this size: a device read of less costs more in latency than the
// page-cache read it would replace saves.
constexpr uint64_t kResidencyGranule = uint64_t{1} << 20;
// Below this a madvise costs more than the page faults it saves.
constexpr uint64_t kMinPopulate = uint64_t{16} << 10;

struct FreeDeleter {
  void operator()(void* p) const noexcept { std::free(p); }
};

// What each worker thread reuses from one read to the next.
struct Worker {
  std::vector<iovec> pieces;                     // the iovecs of one vectored read, gaps included
  std::vector<iovec> spans;                      // its destinations, merged where one continues another
  std::vector<uint8_t> scratch;                  // where gaps go
  std::unique_ptr<uint8_t, FreeDeleter> bounce;  // O_DIRECT only
  std::unique_ptr<File> own;                     // streams only: its descriptor of the file it reads now
  size_t own_index = 0;                          // which file `own` is
  uint64_t populated = 0;                        // bytes faulted in ahead of the copy
};

uint8_t* piece_dst(const ReadRange& r, const std::vector<uint8_t*>& dsts) { return dsts[r.dst] + r.dst_offset; }

// Stores the fields in place: an iovec built on the stack and copied in whole stalls on store
// forwarding, which perf showed to be half the time of building a read's pieces.
void push(std::vector<iovec>& v, void* base, uint64_t length) {
  iovec& p = v.emplace_back();
  p.iov_base = base;
  p.iov_len = length;
}

// Spans are merged as the pieces arrive, in file order, so the span a piece continues is one of
// the last few: the one just before it (ranges of one destination), or the one a row back (the
// k-th run of a row of column shards continues the k-th shard's span). Looking only that far back
// replaces sorting up to IOV_MAX spans per read (2% of a column-sharded load's CPU); runs of more
// shards than this stay apart and, being short, fault in during the copy as before.
constexpr size_t kSpanLookback = 16;

void add_span(std::vector<iovec>& spans, uint8_t* dst, uint64_t length) {
  size_t stop = spans.size() > kSpanLookback ? spans.size() - kSpanLookback : 0;
  for (size_t i = spans.size(); i-- > stop;) {
    if (static_cast<uint8_t*>(spans[i].iov_base) + spans[i].iov_len == dst) {
      spans[i].iov_len += length;
      return;
    }
  }
  push(spans, dst, length);
}

// Faults in the destination pages before the kernel copies into them: one madvise per shard of a
// column-sharded read rather than a page fault per 4 KiB. Returns the bytes it populated.
uint64_t populate_spans(const std::vector<iovec>& spans) {
  uint64_t done = 0;
  for (const iovec& s : spans) {
    if (spans.size() == 1 || s.iov_len >= kMinPopulate) {
      detail::populate(static_cast<uint8_t*>(s.iov_base), s.iov_len);
      done += s.iov_len;
    }
  }
  return done;
}

// One preadv straight into the destinations, gaps into scratch.
void read_buffered(const File& f, const GroupedReads& g, const VectorRead& v, const std::vector<uint8_t*>& dsts,
                   const std::vector<bool>& resident, Worker& w) {
  w.pieces.clear();
  w.spans.clear();
  uint64_t at = v.file_offset;
  for (size_t k = v.first; k < v.last; ++k) {
    const ReadRange& r = g.ranges[k];
    if (r.length == 0) continue;
    if (r.file_offset > at) push(w.pieces, w.scratch.data(), r.file_offset - at);
    uint8_t* dst = piece_dst(r, dsts);
    push(w.pieces, dst, r.length);
    if (resident.empty() || !resident[r.dst]) add_span(w.spans, dst, r.length);
    at = r.file_offset + r.length;
  }
  w.populated += populate_spans(w.spans);
  f.read_exact(w.pieces.data(), static_cast<int>(w.pieces.size()), v.file_offset);
}

// With O_DIRECT the aligned span around the read goes into the bounce buffer, then each range
// is copied out, into destination pages faulted in beforehand as for a buffered read.
void read_direct(const File& f, const GroupedReads& g, const VectorRead& v, const std::vector<uint8_t*>& dsts,
                 const std::vector<bool>& resident, Worker& w) {
  w.spans.clear();
  for (size_t k = v.first; k < v.last; ++k) {
    const ReadRange& r = g.ranges[k];
    if (r.length != 0 && (resident.empty() || !resident[r.dst])) add_span(w.spans, piece_dst(r, dsts), r.length);
  }
  w.populated += populate_spans(w.spans);
  uint8_t* bounce = w.bounce.get();
  uint64_t start = v.file_offset / kDirectAlignment * kDirectAlignment;
  uint64_t span = detail::align_up(v.file_offset + v.span, kDirectAlignment) - start;
  uint64_t got = f.read_at(bounce, span, start);
  if (got < v.file_offset + v.span - start) f.read_exact(bounce, span, start);  // throws with the right offset
  for (size_t k = v.first; k < v.last; ++k) {
    const ReadRange& r = g.ranges[k];
    if (r.length == 0) continue;
    std::memcpy(piece_dst(r, dsts), bounce + (r.file_offset - start), r.length);
  }
}

// O_DIRECT descriptors of the same files (each checked to be the file `files` opened) for those on
// `device`, or none when the file system refuses O_DIRECT (EINVAL): `refusal` then says which file,
// and the cold reads go through the page cache. Files on other devices are opened without it: this
// device's reads never touch them.
std::vector<File> open_direct(const std::vector<ReadSource>& sources, const std::vector<File>& files, uint64_t device,
                              std::string& refusal) {
  std::vector<File> out;
  out.reserve(sources.size());
  try {
    for (size_t i = 0; i < sources.size(); ++i) {
      bool on_device = files[i].identity().device == device;
      out.emplace_back(sources[i].path, on_device);
      if (on_device) out.back().check_identity(files[i].identity());
    }
  } catch (const ReadError& e) {
    if (e.error_number() != EINVAL) throw;
    refusal = "its file system refuses O_DIRECT (opening " + e.path() + " with it: EINVAL)";
    out.clear();
  }
  return out;
}

// The worker's own descriptor of files[i] (a stream's readahead state is its descriptor's),
// checked to be the same file. One at a time: a stream reads in file order, so it never returns
// to a file it left, and a descriptor per stream per file would hold streams x files of them
// (past the usual limit of 1024 for a few hundred files).
const File& own_file(const std::vector<File>& files, size_t i, Worker& w) {
  if (w.own == nullptr || w.own_index != i) {
    w.own.reset();  // closed before the next is opened
    auto f = std::make_unique<File>(files[i].path(), files[i].direct());
    f->check_identity(files[i].identity());
    f->advise_sequential(0, 0);
    w.own = std::move(f);
    w.own_index = i;
  }
  return *w.own;
}

// Where each of `streams` contiguous shares of reads [begin, end) starts, by bytes, and `end`.
std::vector<size_t> stream_starts(const GroupedReads& g, size_t begin, size_t end, uint64_t bytes, unsigned streams) {
  std::vector<size_t> starts{begin};
  uint64_t done = 0;
  for (size_t i = begin; i < end; ++i) {
    // A read starts a new share once the shares before it hold their part of the bytes.
    while (starts.size() < streams && done >= bytes * starts.size() / streams) starts.push_back(i);
    for (size_t k = g.reads[i].first; k < g.reads[i].last; ++k) done += g.ranges[k].length;
  }
  while (starts.size() <= streams) starts.push_back(end);
  return starts;
}

}  // namespace

std::vector<File> open_sources(const std::vector<ReadSource>& sources, bool direct) {
  std::vector<File> files;
  files.reserve(sources.size());
  for (const ReadSource& s : sources) {
    files.emplace_back(s.path, direct);
    uint64_t now = files.back().size();
    if (now != s.expected_size) {
      uint64_t at = std::min(now, s.expected_size);
      throw ReadError(s.path, at, 0, true,
                      s.path + ": file is " + std::to_string(now) + " bytes but its header was read from a file of " +
                          std::to_string(s.expected_size) +
                          " bytes: it changed after its header was read (sizes differ from offset " +
                          std::to_string(at) + ")");
    }
    if (s.check_identity) files.back().check_identity(s.identity);
    files.back().advise_sequential(0, 0);
  }
  return files;
}

void check_ranges(const std::vector<ReadRange>& ranges, size_t sources, const std::vector<uint64_t>& dst_sizes) {
  for (const ReadRange& r : ranges) {
    uint64_t end = 0;
    if (r.file >= sources || r.dst >= dst_sizes.size() || !detail::checked_add(r.dst_offset, r.length, end) ||
        end > dst_sizes[r.dst]) {
      throw std::out_of_range("read range outside its file list or destination buffer");
    }
  }
}

HostReader::HostReader(unsigned threads) : pool_(threads == 0 ? 1 : threads) {}

ReadStats HostReader::read(const std::vector<ReadSource>& sources, const std::vector<ReadRange>& ranges,
                           const std::vector<uint8_t*>& dsts, const std::vector<uint64_t>& dst_sizes,
                           const ReadOptions& options) {
  if (dsts.size() != dst_sizes.size() || (!options.resident.empty() && options.resident.size() != dsts.size())) {
    throw std::invalid_argument("one size (and residency, if any) per destination");
  }
  check_ranges(ranges, sources.size(), dst_sizes);
  std::vector<File> files = open_sources(sources, options.direct);
  ReadStats stats;
  ResidencySplit split;
  if (options.cold_reads && !options.direct) split = split_by_residency(files, ranges, kResidencyGranule);
  stats.residency_steps = split.steps_asked;
  if (!options.cold_reads || options.direct || split.all_resident) {
    run(pool_, files, group_reads(ranges, options.chunk_bytes, options.max_gap), dsts, options, stats);
  } else {
    read_cold(sources, files, split.cold, dsts, options, stats);
    run(pool_, files, group_reads(split.resident, options.chunk_bytes, options.max_gap), dsts, options, stats);
  }
  stats.bytes_per_file = bytes_per_file(ranges, sources.size());
  for (uint64_t n : stats.bytes_per_file) stats.bytes += n;
  return stats;
}

void HostReader::run(ThreadPool& pool, const std::vector<File>& files, const GroupedReads& g,
                     const std::vector<uint8_t*>& dsts, const ReadOptions& options, ReadStats& stats) {
  std::vector<Worker> workers(pool.size());
  for (Worker& w : workers) {
    if (options.direct) {
      void* p = std::aligned_alloc(kDirectAlignment,
                                   detail::align_up(options.chunk_bytes, kDirectAlignment) + 2 * kDirectAlignment);
      if (p == nullptr) throw std::bad_alloc();
      w.bounce.reset(static_cast<uint8_t*>(p));
    } else if (g.gap_bytes > 0) {
      w.scratch.resize(options.max_gap);
    }
  }
  for (size_t begin = 0; begin < g.reads.size();) {
    size_t end = begin;
    uint64_t bytes = 0;
    do {
      for (size_t k = g.reads[end].first; k < g.reads[end].last; ++k) bytes += g.ranges[k].length;
      ++end;
    } while (end < g.reads.size() && (options.batch_bytes == 0 || bytes < options.batch_bytes));
    auto read_one = [&](size_t r, Worker& w, bool own) {
      const VectorRead& v = g.reads[r];
      size_t file = g.ranges[v.first].file;
      const File& f = own ? own_file(files, file, w) : files[file];
      if (options.direct) {
        read_direct(f, g, v, dsts, options.resident, w);
      } else {
        read_buffered(f, g, v, dsts, options.resident, w);
      }
    };
    if (options.streams) {
      std::vector<size_t> starts = stream_starts(g, begin, end, bytes, pool.size());
      pool.parallel_for(pool.size(), [&](unsigned worker, size_t s) {
        for (size_t r = starts[s]; r < starts[s + 1]; ++r) read_one(r, workers[worker], true);
      });
    } else {
      pool.parallel_for(end - begin, [&](unsigned worker, size_t i) { read_one(begin + i, workers[worker], false); });
    }
    if (options.after_batch) options.after_batch(bytes);
    begin = end;
  }
  stats.reads += g.reads.size();
  stats.gap_bytes += g.gap_bytes;
  for (const Worker& w : workers) stats.populated += w.populated;
}

void HostReader::read_cold(const std::vector<ReadSource>& sources, const std::vector<File>& files,
                           const std::vector<ReadRange>& cold, const std::vector<uint8_t*>& dsts,
                           const ReadOptions& options, ReadStats& stats) {
  // Files on several devices are read one device after another, each with its own shape.
  std::vector<uint64_t> device_of(files.size());
  for (size_t f = 0; f < files.size(); ++f) device_of[f] = files[f].identity().device;
  std::map<uint64_t, std::vector<ReadRange>> by_device;
  for (const ReadRange& r : cold) {
    by_device[device_of[r.file]].push_back(r);
    stats.cold_bytes += r.length;
  }
  std::string root = sysfs_root();
  for (const auto& [device, ranges] : by_device) {
    ColdDeviceRead& done = stats.cold.emplace_back();
    done.device = device;
    done.path = files[ranges.front().file].path();
    for (const ReadRange& r : ranges) done.bytes += r.length;
    done.shape = cold_shape_for_device(root, device);
    std::vector<File> direct_files;
    if (done.shape.direct) {
      direct_files = open_direct(sources, files, device, done.shape.direct_refusal);
      done.shape.direct = !direct_files.empty();
    }
    ReadOptions o = options;
    o.chunk_bytes = done.shape.request_bytes;
    o.direct = done.shape.direct;
    // A file system refusing O_DIRECT leaves the shape chosen for it: its reads in turn.
    o.streams = done.shape.streams;
    run(*cold_pool(done.shape.queue_depth), o.direct ? direct_files : files,
        group_reads(ranges, o.chunk_bytes, o.max_gap), dsts, o, stats);
  }
}

std::shared_ptr<ThreadPool> HostReader::cold_pool(unsigned threads) {
  std::lock_guard<std::mutex> lock(cold_mutex_);
  if (cold_pool_ == nullptr || cold_pool_->size() != threads) cold_pool_ = std::make_shared<ThreadPool>(threads);
  return cold_pool_;
}

}  // namespace fst
