// Turn-taking of the consumer warpgroups around their tensor-core issue (FA3's
// inter-warpgroup ping-pong): consumer c issues the products of a tile once consumer c - 1
// has issued its own, then passes the turn on, so one consumer's softmax runs while the
// others' products keep the tensor cores busy.
//
// Protocol: named barrier kBarrierTurn + c (kernel_traits.cuh) is consumer c's turn: it
// waits there (128 threads) for the previous consumer's arrival (128 more). Every consumer
// walks the same tiles, so all take the same number of turns; the last consumer's opening
// pass starts the ring and consumer 0's closing wait takes the last pass, so no arrival is
// left over. Off (Params::consumer_turns = 0), every call is a no-op.
#pragma once

#include "attention/params.hpp"
#include "attention/sm90/kernel_traits.cuh"
#include "attention/sm90/tma.cuh"

namespace proxyattn::cuda::attention::sm90 {

struct Turns {
  static constexpr int kThreads = 2 * kWarpgroupThreads;
  bool enabled;  // Params::consumer_turns
  int mine, next;

  // Consumer `consumer`'s turns: its own barrier, and the next consumer's.
  template <int kConsumers>
  __device__ __forceinline__ static Turns of(const Params& params, int consumer) {
    return {params.consumer_turns != 0, kBarrierTurn + consumer, kBarrierTurn + (consumer + 1) % kConsumers};
  }
  __device__ __forceinline__ void wait() const {
    if (enabled) named_barrier_sync(mine, kThreads);
  }
  __device__ __forceinline__ void pass() const {
    if (enabled) named_barrier_arrive(next, kThreads);
  }
  // Before a consumer's first item: the last consumer's pass starts the ring.
  template <int kConsumers>
  __device__ __forceinline__ void open(int consumer) const {
    if (consumer == kConsumers - 1) pass();
  }
  // After a consumer's last item: consumer 0 takes the last pass.
  __device__ __forceinline__ void close(int consumer) const {
    if (consumer == 0) wait();
  }
};

}  // namespace proxyattn::cuda::attention::sm90
