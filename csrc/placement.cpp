#include "fastsafetensors/placement.hpp"

#include <sys/uio.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <climits>
#include <cstring>
#include <utility>
#include <stdexcept>
#include <string>

#include "fastsafetensors/detail/checked.hpp"
#include "fastsafetensors/detail/populate.hpp"
#include "fastsafetensors/read_plan.hpp"

namespace fst {

namespace {

std::string where(const TensorInfo& t) { return "tensor `" + t.name + "`"; }

uint64_t product(const std::vector<uint64_t>& dims, const char* what) {
  uint64_t n = 1;
  for (uint64_t d : dims) {
    if (!detail::checked_mul(n, d, n)) throw std::invalid_argument(std::string(what) + " overflows");
  }
  return n;
}

// Calls body(index) for every index of `ext` over the axes in `axes` (the others stay 0), in C order.
template <typename Body>
void for_each_index(const std::vector<uint64_t>& ext, const std::vector<size_t>& axes, std::vector<uint64_t>& idx,
                    Body&& body) {
  std::fill(idx.begin(), idx.end(), 0);
  for (size_t a : axes) {
    if (ext[a] == 0) return;
  }
  while (true) {
    body(idx);
    size_t k = axes.size();
    while (k-- > 0) {
      if (++idx[axes[k]] < ext[axes[k]]) break;
      idx[axes[k]] = 0;
    }
    if (k == static_cast<size_t>(-1)) return;
  }
}

}  // namespace

void plan_strided(const Header& h, uint32_t tensor, const std::vector<uint64_t>& shape, const Box& box, uint32_t file,
                  uint32_t dst, uint64_t dst_offset_elems, const std::vector<uint64_t>& dst_strides,
                  std::vector<ReadRange>& out) {
  if (tensor >= h.tensors.size()) throw std::invalid_argument("tensor index out of range");
  const TensorInfo& t = h.tensors[tensor];
  const size_t rank = shape.size();
  if (box.start.size() != rank || box.stop.size() != rank || dst_strides.size() != rank) {
    throw std::invalid_argument("box or strides of another rank than the view of " + where(t));
  }
  if (product(shape, "view size") != product(t.shape, "tensor size")) {
    throw std::invalid_argument("view of " + where(t) + " with another element count");
  }
  const unsigned bits = dtype_bits(t.dtype);
  if (bits % 8 != 0) throw std::invalid_argument("strided placement of the packed dtype of " + where(t));
  const uint64_t size = bits / 8;
  std::vector<uint64_t> ext(rank);
  for (size_t d = 0; d < rank; ++d) {
    if (box.start[d] > box.stop[d] || box.stop[d] > shape[d]) {
      throw std::invalid_argument("box outside the view of " + where(t) + " along dimension " + std::to_string(d));
    }
    ext[d] = box.stop[d] - box.start[d];
    if (ext[d] == 0) return;
  }
  if (rank > 0 && ext[rank - 1] > 1 && dst_strides[rank - 1] != 1) {
    throw std::invalid_argument("innermost destination stride of " + where(t) + " is not 1");
  }
  // A run spans the axes from `cut` on: whole in the box after `cut`, and contiguous in the destination.
  size_t cut = rank == 0 ? 0 : rank - 1;
  uint64_t run = rank == 0 ? 1 : ext[rank - 1];
  while (cut > 0 && ext[cut] == shape[cut] && dst_strides[cut - 1] == run) run *= ext[--cut];
  std::vector<uint64_t> stride(rank, 1);  // of the view, C order
  for (size_t d = rank; d-- > 1;) stride[d - 1] = stride[d] * shape[d];
  std::vector<size_t> outer(cut);
  for (size_t d = 0; d < cut; ++d) outer[d] = d;
  const uint64_t base = h.data_start + t.begin;
  std::vector<uint64_t> idx(rank);
  for_each_index(ext, outer, idx, [&](const std::vector<uint64_t>& i) {
    uint64_t src = 0, at = dst_offset_elems;
    for (size_t d = 0; d < rank; ++d) {
      src += (box.start[d] + i[d]) * stride[d];
      at += i[d] * dst_strides[d];
    }
    ReadRange r{file, dst, base + src * size, run * size, at * size};
    if (!out.empty()) {
      ReadRange& last = out.back();
      if (last.file == file && last.dst == dst && last.file_offset + last.length == r.file_offset &&
          last.dst_offset + last.length == r.dst_offset) {
        last.length += r.length;
        return;
      }
    }
    out.push_back(r);
  });
}

namespace {

constexpr uint64_t kTile = 64;                      // 64x64 elements transposed at a time, in L1
constexpr uint64_t kTaskBytes = uint64_t{1} << 20;  // one thread's share of a copy at a time

template <size_t N>
struct Elem {
  uint8_t b[N];
};

// tile[x * kTile + y] = s[y * ssb + x] for x < ha, y < hb: a block of rows ssb apart transposed
// into a tile, element by element.
template <typename T>
void fill_tile_scalar(const T* s, uint64_t ssb, uint64_t ha, uint64_t hb, uint64_t from_x, uint64_t from_y, T* tile) {
  for (uint64_t y = 0; y < hb; ++y) {
    for (uint64_t x = y < from_y ? from_x : 0; x < ha; ++x) tile[x * kTile + y] = s[y * ssb + x];
  }
}

template <typename T>
void fill_tile(const T* s, uint64_t ssb, uint64_t ha, uint64_t hb, T* tile) {
  fill_tile_scalar(s, ssb, ha, hb, 0, 0, tile);
}

#if defined(__SSE2__)
// 2-byte elements (bf16, fp16: most checkpoints) 8x8 at a time in SSE2 registers (x86-64's
// baseline), three rounds of interleaving: a whole transpose (640x2048, one thread, into memory
// already faulted in) ran 1.2-1.7x as fast as with the element loop on the project's VM.
template <>
void fill_tile<uint16_t>(const uint16_t* s, uint64_t ssb, uint64_t ha, uint64_t hb, uint16_t* tile) {
  const uint64_t ha8 = ha / 8 * 8, hb8 = hb / 8 * 8;
  for (uint64_t y = 0; y < hb8; y += 8) {
    for (uint64_t x = 0; x < ha8; x += 8) {
      __m128i r[8], t[8];
      for (int j = 0; j < 8; ++j) r[j] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + (y + j) * ssb + x));
      for (int j = 0; j < 4; ++j) {
        t[j] = _mm_unpacklo_epi16(r[2 * j], r[2 * j + 1]);
        t[j + 4] = _mm_unpackhi_epi16(r[2 * j], r[2 * j + 1]);
      }
      for (int j = 0; j < 2; ++j) {
        r[j] = _mm_unpacklo_epi32(t[2 * j], t[2 * j + 1]);
        r[j + 2] = _mm_unpackhi_epi32(t[2 * j], t[2 * j + 1]);
        r[j + 4] = _mm_unpacklo_epi32(t[2 * j + 4], t[2 * j + 5]);
        r[j + 6] = _mm_unpackhi_epi32(t[2 * j + 4], t[2 * j + 5]);
      }
      for (int j = 0; j < 4; ++j) {
        uint16_t* out = tile + (x + 2 * j) * kTile + y;
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm_unpacklo_epi64(r[2 * j], r[2 * j + 1]));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + kTile), _mm_unpackhi_epi64(r[2 * j], r[2 * j + 1]));
      }
    }
  }
  fill_tile_scalar(s, ssb, ha, hb, ha8, hb8, tile);
}
#endif

// One C-contiguous block of `ext` to `dst` with strides `ds` (elements of type T). Where the
// destination's densest axis is not the source's innermost one (a transpose), tile by tile over
// both axes; otherwise row by row.
template <typename T>
void copy_block(const uint8_t* src_bytes, uint8_t* dst_bytes, const std::vector<uint64_t>& ext,
                const std::vector<uint64_t>& ds) {
  const T* src = reinterpret_cast<const T*>(src_bytes);
  T* dst = reinterpret_cast<T*>(dst_bytes);
  const size_t rank = ext.size();
  if (rank == 0) {
    *dst = *src;
    return;
  }
  std::vector<uint64_t> ss(rank, 1);
  for (size_t d = rank; d-- > 1;) ss[d - 1] = ss[d] * ext[d];
  const size_t a = rank - 1;
  size_t b = a;
  for (size_t d = 0; d < a; ++d) {
    if (ext[d] > 1 && (b == a || ds[d] < ds[b])) b = d;
  }
  std::vector<uint64_t> idx(rank);
  if (ext[a] == 1 || ds[a] == 1 || b == a || ds[b] >= ds[a]) {
    std::vector<size_t> rows;
    for (size_t d = 0; d < a; ++d) rows.push_back(d);
    for_each_index(ext, rows, idx, [&](const std::vector<uint64_t>& i) {
      uint64_t s = 0, o = 0;
      for (size_t d = 0; d < a; ++d) {
        s += i[d] * ss[d];
        o += i[d] * ds[d];
      }
      if (ds[a] == 1) {
        std::memcpy(dst + o, src + s, ext[a] * sizeof(T));
      } else {
        for (uint64_t j = 0; j < ext[a]; ++j) dst[o + j * ds[a]] = src[s + j];
      }
    });
    return;
  }
  std::vector<size_t> others;
  for (size_t d = 0; d < rank; ++d) {
    if (d != a && d != b) others.push_back(d);
  }
  const uint64_t na = ext[a], nb = ext[b], dsa = ds[a], dsb = ds[b], ssb = ss[b];
  // A tile goes through a small buffer, transposed there: reading it row by row and writing it out
  // row by row both run along memory. Strided straight from one side to the other, the 64 rows of a
  // tile sit a power of two apart in most checkpoints, so they share a few cache sets and evict
  // each other on every element (measured 10x slower).
  T tile[kTile * kTile];
  for_each_index(ext, others, idx, [&](const std::vector<uint64_t>& i) {
    uint64_t s0 = 0, o0 = 0;
    for (size_t d : others) {
      s0 += i[d] * ss[d];
      o0 += i[d] * ds[d];
    }
    for (uint64_t ib = 0; ib < nb; ib += kTile) {
      const uint64_t hb = std::min(nb - ib, kTile);
      for (uint64_t ia = 0; ia < na; ia += kTile) {
        const uint64_t ha = std::min(na - ia, kTile);
        fill_tile(src + s0 + ib * ssb + ia, ssb, ha, hb, tile);
        T* o = dst + o0 + ia * dsa + ib * dsb;
        for (uint64_t x = 0; x < ha; ++x) {
          if (dsb == 1) {
            std::memcpy(o + x * dsa, tile + x * kTile, hb * sizeof(T));
          } else {
            for (uint64_t y = 0; y < hb; ++y) o[x * dsa + y * dsb] = tile[x * kTile + y];
          }
        }
      }
    }
  });
}

void copy_any(unsigned itemsize, const uint8_t* src, uint8_t* dst, const std::vector<uint64_t>& ext,
              const std::vector<uint64_t>& ds) {
  switch (itemsize) {
    case 1: return copy_block<uint8_t>(src, dst, ext, ds);
    case 2: return copy_block<uint16_t>(src, dst, ext, ds);
    case 4: return copy_block<uint32_t>(src, dst, ext, ds);
    case 8: return copy_block<uint64_t>(src, dst, ext, ds);
    default: return copy_block<Elem<16>>(src, dst, ext, ds);  // itemsize checked before: 16
  }
}

void check_copy(const StridedCopy& c, uint64_t src_size, uint64_t dst_size) {
  if (c.shape.size() != c.dst_strides.size()) throw std::invalid_argument("strided copy: strides of another rank");
  if (c.itemsize != 1 && c.itemsize != 2 && c.itemsize != 4 && c.itemsize != 8 && c.itemsize != 16) {
    throw std::invalid_argument("strided copy: element size " + std::to_string(c.itemsize));
  }
  uint64_t bytes = product(c.shape, "strided copy size"), end = 0, last = 0;
  if (bytes == 0) return;
  if (!detail::checked_mul(bytes, c.itemsize, bytes) || !detail::checked_add(c.src_offset, bytes, end) ||
      end > src_size) {
    throw std::invalid_argument("strided copy outside its source");
  }
  for (size_t d = 0; d < c.shape.size(); ++d) {
    uint64_t step = 0;
    if (!detail::checked_mul(c.shape[d] - 1, c.dst_strides[d], step) || !detail::checked_add(last, step, last)) {
      throw std::invalid_argument("strided copy outside its destination");
    }
  }
  if (!detail::checked_add(last, 1, last) || !detail::checked_mul(last, c.itemsize, last) ||
      !detail::checked_add(c.dst_offset, last, end) || end > dst_size) {
    throw std::invalid_argument("strided copy outside its destination");
  }
}

}  // namespace

void copy_strided(const uint8_t* src, uint64_t src_size, uint8_t* dst, uint64_t dst_size,
                  const std::vector<StridedCopy>& copies, ThreadPool& pool) {
  struct Task {
    size_t copy;
    uint64_t begin, end;  // rows of the copy's leading axis
  };
  std::vector<Task> tasks;
  for (size_t k = 0; k < copies.size(); ++k) {
    const StridedCopy& c = copies[k];
    check_copy(c, src_size, dst_size);
    const uint64_t numel = product(c.shape, "strided copy size");
    if (numel == 0) continue;
    if (c.shape.empty()) {
      tasks.push_back({k, 0, 1});
      continue;
    }
    const uint64_t row = numel / c.shape[0] * c.itemsize;
    const uint64_t step = std::max<uint64_t>(1, kTaskBytes / std::max<uint64_t>(row, 1));
    for (uint64_t r = 0; r < c.shape[0]; r += step) tasks.push_back({k, r, std::min(c.shape[0], r + step)});
  }
  pool.parallel_for(tasks.size(), [&](unsigned, size_t i) {
    const Task& task = tasks[i];
    const StridedCopy& c = copies[task.copy];
    if (c.shape.empty()) return copy_any(c.itemsize, src + c.src_offset, dst + c.dst_offset, c.shape, c.dst_strides);
    std::vector<uint64_t> ext = c.shape;
    ext[0] = task.end - task.begin;
    const uint64_t row = product(c.shape, "strided copy size") / c.shape[0] * c.itemsize;
    const uint64_t at = c.dst_offset + task.begin * c.dst_strides[0] * c.itemsize;
    copy_any(c.itemsize, src + c.src_offset + task.begin * row, dst + at, ext, c.dst_strides);
  });
}

namespace {

// What one thread of read_strided reuses from one box to the next.
struct BoxWorker {
  std::vector<uint8_t> box;      // the box read, then copied out
  std::vector<uint8_t> scratch;  // where gaps go
  std::vector<iovec> pieces;
  uint64_t reads = 0, gap_bytes = 0;
};

// The ranges [first, last) (of one box, in file order where they follow each other) into the
// worker's box buffer: neighbours in one file with gaps of at most max_gap in one preadv.
void read_box(const std::vector<File>& files, const std::vector<ReadRange>& ranges, size_t first, size_t last,
              uint64_t max_gap, BoxWorker& w) {
  size_t k = first;
  while (k < last) {
    if (ranges[k].length == 0) {
      ++k;
      continue;
    }
    const ReadRange& head = ranges[k];
    w.pieces.clear();
    uint64_t at = head.file_offset;
    for (; k < last && w.pieces.size() + 2 <= IOV_MAX; ++k) {
      const ReadRange& r = ranges[k];
      if (r.length == 0) continue;
      if (r.file != head.file || r.file_offset < at || r.file_offset - at > max_gap) break;
      if (r.file_offset > at) {
        w.pieces.push_back({w.scratch.data(), r.file_offset - at});
        w.gap_bytes += r.file_offset - at;
      }
      w.pieces.push_back({w.box.data() + r.dst_offset, r.length});
      at = r.file_offset + r.length;
    }
    files[head.file].read_exact(w.pieces.data(), static_cast<int>(w.pieces.size()), head.file_offset);
    ++w.reads;
  }
}

}  // namespace

ReadStats read_strided(const std::vector<File>& files, const std::vector<ReadRange>& ranges,
                       const std::vector<StridedCopy>& copies, uint64_t box_bytes, uint64_t max_gap, uint8_t* dst,
                       uint64_t dst_size, ThreadPool& pool) {
  for (const StridedCopy& c : copies) check_copy(c, box_bytes, dst_size);
  check_ranges(ranges, files.size(), std::vector<uint64_t>(copies.size(), box_bytes));
  std::vector<size_t> first(copies.size() + 1, ranges.size());  // box k's ranges: [first[k], first[k + 1])
  for (size_t i = ranges.size(); i-- > 0;) {
    if (i + 1 < ranges.size() && ranges[i].dst > ranges[i + 1].dst) {
      throw std::invalid_argument("read_strided: ranges not grouped by box in increasing order");
    }
    first[ranges[i].dst] = i;
  }
  for (size_t k = copies.size(); k-- > 0;) first[k] = std::min(first[k], first[k + 1]);
  ReadStats stats;
  std::vector<BoxWorker> workers(pool.size());
  for (BoxWorker& w : workers) {
    w.box.resize(box_bytes);
    w.scratch.resize(max_gap);
  }
  pool.parallel_for(copies.size(), [&](unsigned worker, size_t k) {
    BoxWorker& w = workers[worker];
    read_box(files, ranges, first[k], first[k + 1], max_gap, w);
    const StridedCopy& c = copies[k];
    copy_any(c.itemsize, w.box.data() + c.src_offset, dst + c.dst_offset, c.shape, c.dst_strides);
  });
  for (const BoxWorker& w : workers) {
    stats.reads += w.reads;
    stats.gap_bytes += w.gap_bytes;
  }
  stats.bytes_per_file = bytes_per_file(ranges, files.size());
  for (uint64_t n : stats.bytes_per_file) stats.bytes += n;
  return stats;
}

// Measured: the load's system time 0.95 -> 0.35 s for 0.53 GB of shards.
uint64_t populate_strided(const std::vector<StridedCopy>& copies, uint64_t box_bytes, uint8_t* dst, uint64_t dst_size,
                          ThreadPool& pool) {
  for (const StridedCopy& c : copies) check_copy(c, box_bytes, dst_size);
  constexpr uint64_t kPiece = uint64_t{2} << 20;
  std::vector<std::pair<uint64_t, uint64_t>> spans;  // [begin, end) bytes of dst, checked by check_copy
  for (const StridedCopy& c : copies) {
    if (product(c.shape, "strided copy size") == 0) continue;
    uint64_t last = 0;
    for (size_t d = 0; d < c.shape.size(); ++d) last += (c.shape[d] - 1) * c.dst_strides[d];
    spans.push_back({c.dst_offset, c.dst_offset + (last + 1) * c.itemsize});
  }
  std::sort(spans.begin(), spans.end());
  std::vector<std::pair<uint64_t, uint64_t>> pieces;
  for (size_t i = 0; i < spans.size();) {
    uint64_t begin = spans[i].first, end = spans[i].second;
    for (++i; i < spans.size() && spans[i].first <= end; ++i) end = std::max(end, spans[i].second);
    for (uint64_t at = begin; at < end; at += kPiece) pieces.push_back({at, std::min(end, at + kPiece)});
  }
  pool.parallel_for(pieces.size(), [&](unsigned, size_t i) {
    detail::populate(dst + pieces[i].first, pieces[i].second - pieces[i].first);
  });
  uint64_t bytes = 0;
  for (const auto& [begin, end] : pieces) bytes += end - begin;
  return bytes;
}

}  // namespace fst
