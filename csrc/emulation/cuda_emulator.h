// A small CPU emulator of the CUDA features the kernel bodies in csrc/*.cuh use, so that their logic
// (indexing, reductions, barriers, packed accesses, every code path of the launch plan) is tested on
// machines without a GPU. Test infrastructure only: it is not shipped in the wheel.
//
// Each CUDA thread of a block is a ucontext fiber; one block runs at a time, on one OS thread. A thread
// runs until it reaches __syncthreads or a warp shuffle; when every live thread is blocked, the scheduler
// completes the shuffles of warps whose 32 lanes all arrived, else releases the barrier once all threads
// reached it, else reports the deadlock or divergence that would be undefined behaviour on a GPU (a
// full-mask shuffle some lanes never reach, a barrier some threads skip). Dynamic shared memory starts as
// NaN so that reading a value nobody wrote shows up in the results.
#pragma once

#include <math.h>
#include <ucontext.h>

#include <cstdint>
#include <functional>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

namespace cuda_emulator {

enum class State { Running, AtBarrier, AtShuffle, Done };

struct Fiber {
  ucontext_t context;
  State state = State::Running;
  float shuffle_value = 0.f;
  int shuffle_source = 0;
  float shuffle_result = 0.f;
};

struct Block {
  std::vector<Fiber> fibers;
  ucontext_t scheduler;
  int current = 0;
  const std::function<void(int)>* body = nullptr;
};

inline Block*& current_block() {
  static thread_local Block* block = nullptr;
  return block;
}

inline void fiber_main(int index) {
  Block* block = current_block();
  (*block->body)(index);
  block->fibers[index].state = State::Done;
  // returning resumes uc_link, the scheduler
}

inline void yield_to_scheduler(State state) {
  Block* block = current_block();
  Fiber& fiber = block->fibers[block->current];
  fiber.state = state;
  swapcontext(&fiber.context, &block->scheduler);
}

// Runs one block of `threads` threads (a multiple of 32); body(tid) is the thread's work.
inline void run_block(int threads, const std::function<void(int)>& body) {
  constexpr size_t kStackBytes = 64 * 1024;
  static thread_local std::vector<std::vector<char>> stacks;
  if (static_cast<int>(stacks.size()) < threads) stacks.resize(threads, std::vector<char>(kStackBytes));
  Block block;
  block.fibers.resize(threads);
  block.body = &body;
  for (int i = 0; i < threads; ++i) {
    Fiber& f = block.fibers[i];
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = stacks[i].data();
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = &block.scheduler;
    makecontext(&f.context, reinterpret_cast<void (*)()>(fiber_main), 1, i);
  }
  Block* previous = current_block();
  current_block() = &block;
  for (;;) {
    for (int i = 0; i < threads; ++i) {
      if (block.fibers[i].state != State::Running) continue;
      block.current = i;
      swapcontext(&block.scheduler, &block.fibers[i].context);
    }
    int live = 0, at_barrier = 0;
    for (const Fiber& f : block.fibers) {
      live += f.state != State::Done;
      at_barrier += f.state == State::AtBarrier;
    }
    if (live == 0) break;
    bool released = false;
    for (int w = 0; w < threads / 32; ++w) {
      int at_shuffle = 0;
      for (int l = 0; l < 32; ++l) at_shuffle += block.fibers[w * 32 + l].state == State::AtShuffle;
      if (at_shuffle == 0) continue;
      if (at_shuffle != 32) {
        current_block() = previous;
        throw std::runtime_error("warp " + std::to_string(w) + ": " + std::to_string(at_shuffle) +
                                 " of 32 lanes reached a full-mask shuffle, the others did not");
      }
      float results[32];
      for (int l = 0; l < 32; ++l) {
        const Fiber& f = block.fibers[w * 32 + l];
        results[l] = block.fibers[w * 32 + (f.shuffle_source & 31)].shuffle_value;
      }
      for (int l = 0; l < 32; ++l) {
        block.fibers[w * 32 + l].shuffle_result = results[l];
        block.fibers[w * 32 + l].state = State::Running;
      }
      released = true;
    }
    if (released) continue;
    if (at_barrier != threads) {
      current_block() = previous;
      throw std::runtime_error(std::to_string(at_barrier) + " of " + std::to_string(threads) +
                               " threads wait at __syncthreads, the others finished");
    }
    for (Fiber& f : block.fibers) f.state = State::Running;
  }
  current_block() = previous;
}

// Runs a whole grid of blocks of `threads` threads with `shared_floats` floats of dynamic shared memory
// (NaN-filled per block): kernel(shared, tid, block).
template <typename Kernel>
void launch_blocks(int64_t blocks, int threads, int64_t shared_floats, Kernel kernel) {
  std::vector<float> shared(static_cast<size_t>(shared_floats));
  for (int64_t b = 0; b < blocks; ++b) {
    std::fill(shared.begin(), shared.end(), std::numeric_limits<float>::quiet_NaN());
    const std::function<void(int)> body = [&](int tid) { kernel(shared.data(), tid, b); };
    run_block(threads, body);
  }
}

inline int current_lane() { return current_block()->current & 31; }

}  // namespace cuda_emulator

inline void __syncthreads() { cuda_emulator::yield_to_scheduler(cuda_emulator::State::AtBarrier); }

inline float __shfl_xor_sync(unsigned /*mask*/, float value, int lane_mask) {
  cuda_emulator::Block* block = cuda_emulator::current_block();
  cuda_emulator::Fiber& fiber = block->fibers[block->current];
  fiber.shuffle_value = value;
  fiber.shuffle_source = cuda_emulator::current_lane() ^ lane_mask;
  cuda_emulator::yield_to_scheduler(cuda_emulator::State::AtShuffle);
  return block->fibers[block->current].shuffle_result;
}

inline float atomicAdd(float* address, float value) {
  const float old = *address;
  *address = old + value;
  return old;
}

// The GPU's __expf is ex2.approx(x * log2(e)) with the product rounded to float32 first; that rounding, an
// error of about |x| * 2^-24 relative, dominates its error for the max-subtracted softmax arguments (ex2.approx
// itself is within 2 ulp), so the emulator rounds the same way and takes exp2f for ex2.approx.
inline float __expf(float x) {
  const float scaled = x * 1.4426950408889634f;
  return exp2f(scaled);
}
