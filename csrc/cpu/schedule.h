// How the passes of one call are spread over threads. Every pass is a loop over
// work units that belong to one sample each (planes, GroupNorm groups, attention
// rows, samples), and no unit reads another sample's results, so the sequence can
// run sample by sample.
#pragma once

#include <ATen/Parallel.h>

#include <functional>
#include <vector>

namespace scsa_kernels::cpu {

// One pass: `units` work units per sample; run(begin, end) does units [begin, end)
// of the whole batch (unit u belongs to sample u / units).
struct Stage {
  int64_t units;
  int64_t grain;  // at::parallel_for grain when the stage runs on its own
  std::function<void(int64_t, int64_t)> run;
};

// Whether the batch keeps every thread busy when threads take whole samples
// (at most 25% idle at the end).
inline bool whole_samples_per_thread(int64_t batch) {
  const int64_t threads = at::get_num_threads();
  return batch % threads == 0 || batch >= 4 * threads;
}

// Runs the stages in order. With enough samples, one parallel loop over samples
// runs every stage for its samples: a sample's planes are still in cache from the
// previous pass and the threads meet once. Otherwise each stage is a parallel loop
// over its own units. Each unit computes the same values either way.
inline void run_stages(int64_t batch, const std::vector<Stage>& stages) {
  if (whole_samples_per_thread(batch)) {
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b)
        for (const Stage& s : stages) s.run(b * s.units, (b + 1) * s.units);
    });
    return;
  }
  for (const Stage& s : stages) at::parallel_for(0, batch * s.units, s.grain, s.run);
}

// Runs `first`, then `between` once for the whole batch (a batch-wide step: recombination's
// GEMMs, which read conv_d once for all samples), then `rest`. Without `between`, one sequence.
inline void run_stages(int64_t batch, std::vector<Stage> first, const std::function<void()>& between,
                       const std::vector<Stage>& rest) {
  if (!between) {
    first.insert(first.end(), rest.begin(), rest.end());
    return run_stages(batch, first);
  }
  run_stages(batch, first);
  between();
  run_stages(batch, rest);
}

}  // namespace scsa_kernels::cpu
