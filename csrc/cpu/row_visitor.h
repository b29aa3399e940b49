// The one loop every full-size pass is built on: visit each row of each plane in
// increasing h, as a contiguous compute-type array, reading up to two inputs and
// writing at most one output, whatever their dtype and strides.
//
// Planar rows (unit stride along W, e.g. NCHW): plane by plane, rows read in place
// when the dtype is the compute type. Otherwise (channels_last and other strided
// layouts): the planes of one sample are swept together row by row, each row
// gathered kBlock neighbouring channels at a time into a (channels x W) tile with
// contiguous reads along C (float32: 8x8 register transposes). A channels_last row
// (W x C) is thus used whole while it is in cache; sweeping one channel block over
// the whole sample at a time came back to each cache line once per block.
// Forward, 64x56x56 fp32 channels_last batch 8, 1 thread: scalar gather/scatter
// 4.7 ms, transposes 3.8 ms, whole rows 3.4 ms (NCHW: 1.3-1.6 ms).
// Each plane sees its rows in the same order in both modes, so per-plane results
// are bitwise identical across layouts.
#pragma once

#include "common.h"

#include <cstdint>

namespace scsa_kernels::cpu {

// Channels per tile in the strided mode.
constexpr int64_t kBlock = 16;
// Planes of at most this many cells move whole in the strided mode (run_blocked_planes): a
// tile of kBlock x 1024 floats is 64 KiB.
constexpr int64_t kWholePlaneCells = 1024;

// Row-length accumulators, one per plane in flight, padded to whole vectors
// (accumulate_scaled, accumulate_row). slots: RowVisitor::planes_in_flight(), a power
// of two, so slot p & (slots - 1) is distinct for that many consecutive planes.
template <typename T>
class PlaneRowBuffers {
 public:
  PlaneRowBuffers(int64_t W, int64_t slots) : stride_(padded_to_vectors<T>(W)), mask_(slots - 1), data_(slots * stride_) {}
  T* operator[](int64_t p) { return data_.data() + (p & mask_) * stride_; }
  // Plane p's slot, zeroed (at its first row).
  T* zeroed(int64_t p) {
    T* slot = (*this)[p];
    std::fill(slot, slot + stride_, T(0));
    return slot;
  }

 private:
  int64_t stride_, mask_;
  std::vector<T> data_;
};

// Whether a pass hints its input rows to the cache ahead of use. The first pass of a
// call to touch an input (forward means, backward grad products) streams it from
// DRAM, where the hardware prefetchers alone left the pass well behind a plain read
// of the same bytes (hints: forward 64x56x56 batch 8 ~8% faster, backward ~6%).
// Later passes find the sample in L2/L3, where hints only cost instructions
// (measured slower). Planar mode only: the blocked mode reads across channels.
enum class Prefetch { kNone, kInputs };

// How far ahead of the row being read the hints go (1, 2 and 4 KiB measured; 2 KiB
// best by a little). In the dense layouts the pass streams each input in address
// order, so these are the bytes it reads next.
constexpr int64_t kPrefetchBytes = 2048;
constexpr int64_t kCacheLineBytes = 64;

template <typename scalar_t, typename acc_t>
class RowVisitor {
 public:
  // in1 and out may be null.
  RowVisitor(const Planes<const scalar_t>* in0, const Planes<const scalar_t>* in1, const Planes<scalar_t>* out,
             int64_t C, int64_t H, int64_t W, Prefetch prefetch = Prefetch::kNone)
      : in0_(in0), in1_(in1), out_(out), C_(C), H_(H), W_(W),
        blocked_(in0->stride_w != 1 || (in1 && in1->stride_w != 1) || (out && out->stride_w != 1)),
        whole_planes_(blocked_ && H * W <= kWholePlaneCells && evenly_spaced(in0) && evenly_spaced(in1) &&
                      evenly_spaced(out)),
        prefetch_(prefetch == Prefetch::kInputs) {}

  // How many consecutive planes have rows in flight at once, rounded up to a power of two
  // (the slots of PlaneRowBuffers): one in planar mode, a sample's C in the strided mode.
  int64_t planes_in_flight() const {
    int64_t slots = 1;
    while (blocked_ && slots < C_) slots *= 2;
    return slots;
  }

  // body(p, h, row0, row1, out_row): row1 / out_row are null when absent.
  template <typename Body>
  void run(int64_t begin, int64_t end, Body&& body) const {
    if (blocked_) {
      run_blocked(begin, end, body);
    } else {
      run_planar(begin, end, body);
    }
  }

 private:
  template <typename Body>
  void run_planar(int64_t begin, int64_t end, Body& body) const {
    RowReader<scalar_t, acc_t> read0(W_), read1(W_);
    RowWriter<scalar_t, acc_t> writer(W_);
    int64_t b = begin / C_, c = begin % C_;  // of plane p, stepped without divisions
    for (int64_t p = begin; p < end; ++p) {
      const auto plane0 = in0_->plane(b, c);
      const auto plane1 = in1_ ? in1_->plane(b, c) : decltype(plane0){nullptr, 0};
      const auto plane_out = out_ ? out_->plane(b, c) : typename Planes<scalar_t>::Plane{nullptr, 0};
      for (int64_t h = 0; h < H_; ++h) {
        if (prefetch_) {
          prefetch_ahead(plane0.row(h));
          if (in1_) prefetch_ahead(plane1.row(h));
        }
        const acc_t* r0 = read0.read(plane0.row(h), 1, W_);
        const acc_t* r1 = in1_ ? read1.read(plane1.row(h), 1, W_) : nullptr;
        acc_t* o = out_ ? writer.target(plane_out.row(h), 1) : nullptr;
        body(p, h, r0, r1, o);
        if (out_) writer.commit(plane_out.row(h), 1, W_);
      }
      if (++c == C_) {
        c = 0;
        ++b;
      }
    }
  }

  // A hint for the cache lines kPrefetchBytes past a row (never dereferenced: a hint
  // past the end of x is dropped).
  void prefetch_ahead(const scalar_t* row) const {
    const uintptr_t ahead = reinterpret_cast<uintptr_t>(row) + kPrefetchBytes;
    const int64_t row_bytes = W_ * static_cast<int64_t>(sizeof(scalar_t));
    for (int64_t offset = 0; offset < row_bytes; offset += kCacheLineBytes)
      __builtin_prefetch(reinterpret_cast<const void*>(ahead + offset));
  }

  // Whether a block's rows move by 8x8 register transposes: float32 data, or bfloat16
  // converted through an 8x8 stage, with unit stride along C (channels_last) and whole
  // groups of 8 channels. The plain loops below took ~3/4 of a channels_last forward in
  // perf (64x56x56 fp32). float16 through the stage measured slower than the plain loops
  // (64x56x56 batch 8, 1 thread: 3.6 -> 4.5 ms) and keeps them; bfloat16 3.7 -> 2.5 ms.
  static constexpr bool kTransposes =
      std::is_same_v<acc_t, float> && (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, c10::BFloat16>);
  static constexpr int64_t kSide = 8;  // at::vec::transpose_mxn<float, 8, 8> (AVX2 shuffles; plain loops elsewhere)

  // block[k * ld + j] = cells[j * stride + k] for 8 cells j of 8 channels k (converted to float
  // by at::vec::convert, as the planar mode's rows are).
  static void transpose_in(const scalar_t* cells, int64_t stride, float* block, int64_t ld) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      at::vec::transpose_mxn<float, kSide, kSide>(cells, stride, block, ld);
    } else {
      alignas(32) float staged[kSide * kSide];
      for (int64_t j = 0; j < kSide; ++j) at::vec::convert(cells + j * stride, staged + j * kSide, kSide);
      at::vec::transpose_mxn<float, kSide, kSide>(staged, kSide, block, ld);
    }
  }

  // cells[j * stride + k] = block[k * ld + j], rounded to scalar_t.
  static void transpose_out(const float* block, int64_t ld, scalar_t* cells, int64_t stride) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      at::vec::transpose_mxn<float, kSide, kSide>(block, ld, cells, stride);
    } else {
      alignas(32) float staged[kSide * kSide];
      at::vec::transpose_mxn<float, kSide, kSide>(block, ld, staged, kSide);
      for (int64_t j = 0; j < kSide; ++j) at::vec::convert(staged + j * kSide, cells + j * stride, kSide);
    }
  }

  // Calls move(i, c) for every whole 8x8 block (cells i..i+7, channels c..c+7) of a run of
  // `count` cells of nb channels, when the channels have unit stride and come in whole groups of
  // 8; returns the first cell left to the plain loops (0 when the blocks cannot transpose).
  template <typename Move>
  static int64_t for_each_block(int64_t count, int64_t nb, int64_t channel_stride, Move&& move) {
    if (channel_stride != 1 || nb % kSide != 0) return 0;
    int64_t i = 0;
    for (; i + kSide <= count; i += kSide)
      for (int64_t c = 0; c < nb; c += kSide) move(i, c);
    return i;
  }

  // tile[c * count + i] = cells[i * cell_stride + c * channel_stride]: `count` cells (a row, or a
  // whole evenly spaced plane) of nb neighbouring channels.
  static void gather(const scalar_t* cells, int64_t cell_stride, int64_t channel_stride, int64_t count, int64_t nb,
                     acc_t* tile) {
    int64_t i = 0;
    if constexpr (kTransposes)
      i = for_each_block(count, nb, channel_stride, [&](int64_t j, int64_t c) {
        transpose_in(cells + j * cell_stride + c, cell_stride, tile + c * count + j, count);
      });
    for (; i < count; ++i) {
      const scalar_t* cell = cells + i * cell_stride;
      for (int64_t c = 0; c < nb; ++c) tile[c * count + i] = static_cast<acc_t>(cell[c * channel_stride]);
    }
  }

  static void scatter(const acc_t* tile, int64_t count, int64_t nb, scalar_t* cells, int64_t cell_stride,
                      int64_t channel_stride) {
    int64_t i = 0;
    if constexpr (kTransposes)
      i = for_each_block(count, nb, channel_stride, [&](int64_t j, int64_t c) {
        transpose_out(tile + c * count + j, count, cells + j * cell_stride + c, cell_stride);
      });
    for (; i < count; ++i) {
      scalar_t* cell = cells + i * cell_stride;
      for (int64_t c = 0; c < nb; ++c) cell[c * channel_stride] = static_cast<scalar_t>(tile[c * count + i]);
    }
  }

  template <typename Body>
  void run_blocked(int64_t begin, int64_t end, Body& body) const {
    if (whole_planes_) {
      run_blocked_planes(begin, end, body);
    } else {
      run_blocked_rows(begin, end, body);
    }
  }

  template <typename Body>
  void run_blocked_rows(int64_t begin, int64_t end, Body& body) const {
    std::vector<acc_t> tile0(kBlock * W_), tile1(in1_ ? kBlock * W_ : 0), tile_out(out_ ? kBlock * W_ : 0);
    for (int64_t group = begin; group < end;) {
      const int64_t group_end = std::min(end, (group / C_ + 1) * C_);  // planes of one sample
      for (int64_t h = 0; h < H_; ++h) {
        for (int64_t p0 = group; p0 < group_end; p0 += kBlock) {
          const int64_t nb = std::min(kBlock, group_end - p0);
          gather(in0_->plane(p0).row(h), in0_->stride_w, in0_->stride_c, W_, nb, tile0.data());
          if (in1_) gather(in1_->plane(p0).row(h), in1_->stride_w, in1_->stride_c, W_, nb, tile1.data());
          for (int64_t c = 0; c < nb; ++c)
            body(p0 + c, h, tile0.data() + c * W_, in1_ ? tile1.data() + c * W_ : nullptr,
                 out_ ? tile_out.data() + c * W_ : nullptr);
          if (out_) scatter(tile_out.data(), W_, nb, out_->plane(p0).row(h), out_->stride_w, out_->stride_c);
        }
      }
      group = group_end;
    }
  }

  // Small planes with evenly spaced cells (channels_last: stride_h == W * stride_w): each block
  // of channels moves as one run of H*W cells, so the 8x8 transposes cover nearly all of it
  // where rows of W < 16 left most columns to the plain loops. The sample stays in L2.
  template <typename Body>
  void run_blocked_planes(int64_t begin, int64_t end, Body& body) const {
    const int64_t cells = H_ * W_;
    std::vector<acc_t> tile0(kBlock * cells), tile1(in1_ ? kBlock * cells : 0), tile_out(out_ ? kBlock * cells : 0);
    for (int64_t p0 = begin; p0 < end;) {
      const int64_t nb = std::min({kBlock, end - p0, C_ - p0 % C_});  // neighbouring channels of one sample
      gather(in0_->plane(p0).row(0), in0_->stride_w, in0_->stride_c, cells, nb, tile0.data());
      if (in1_) gather(in1_->plane(p0).row(0), in1_->stride_w, in1_->stride_c, cells, nb, tile1.data());
      for (int64_t c = 0; c < nb; ++c)
        for (int64_t h = 0; h < H_; ++h)
          body(p0 + c, h, tile0.data() + c * cells + h * W_, in1_ ? tile1.data() + c * cells + h * W_ : nullptr,
               out_ ? tile_out.data() + c * cells + h * W_ : nullptr);
      if (out_) scatter(tile_out.data(), cells, nb, out_->plane(p0).row(0), out_->stride_w, out_->stride_c);
      p0 += nb;
    }
  }

  template <typename Planes_>
  bool evenly_spaced(const Planes_* planes) const {
    return planes == nullptr || planes->stride_h == W_ * planes->stride_w;
  }

  const Planes<const scalar_t>* in0_;
  const Planes<const scalar_t>* in1_;
  const Planes<scalar_t>* out_;
  int64_t C_, H_, W_;
  bool blocked_;
  bool whole_planes_;  // strided mode: whole planes per gather (run_blocked_planes), else rows
  bool prefetch_;
};

}  // namespace scsa_kernels::cpu
