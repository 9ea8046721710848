// Block-sparse causal attention forward for sm_90a (H100), FlashAttention-3 style:
// persistent CTAs (one per SM) taking the work items of params.hpp in order (longest rows
// first) from an atomic counter, warp-specialised. This file is the kernel: the barriers,
// the warpgroups' roles and their registers (setmaxnreg); each role lives in a file named
// for it, included below.
//
//   warpgroup 0 (producer, registers released): thread 0 (d = 128) or a decoder warp (d = 64,
//     ranking heads with its lanes: head_ranking.cuh) takes the next item from the counter,
//     decodes it and hands it to the consumers (and from the decoder warp to thread 0)
//     through a small shared-memory ring (tile_scheduler.cuh; they read no global memory
//     between items); thread 0 walks each item's kept blocks in the order of the block index
//     and copies each K and V tile with the tensor copy engine (TMA, 128-byte swizzle) into a
//     ring of kStages shared-memory stages, each completing on its own "full" mbarrier
//     (producer.cuh, shared_storage.cuh); it first copies every consumer's Q tile (once that
//     consumer has released the previous item's Q). The ring runs on across items, so the
//     next item's Q and first tiles load while the consumers finish the current one (the
//     last P V product and the epilogue), so a short row does not pay its pipeline fill.
//   warpgroups 1..kConsumers (consumers; 2 at d = 128, 3 at d = 64): kGroupRows query rows of
//     one head each (a pair of params.hpp). S = Q K^T with wgmma (Q and K from shared
//     memory), mask, online softmax in fp32 registers, O += P V with wgmma (P from registers,
//     V from shared memory) (mainloop.cuh, softmax.cuh), the consumers taking turns to issue
//     their products (pingpong.cuh); then O and LSE out through the consumer's own staging
//     buffer (epilogue.cuh).
//
// kernel_traits.cuh holds every shape and the register split; tma.cuh and wgmma.cuh the PTX
// wrappers. The warpgroups' walks over the items stay in the kernel function itself, and
// every helper is __forceinline__ and takes what it shares by reference: the producer's
// walk moved into a function of its own changed ptxas's allocation of the producer's
// local memory.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "attention/params.hpp"
#include "attention/sm90/kernel_traits.cuh"
#include "attention/sm90/mainloop.cuh"
#include "attention/sm90/pingpong.cuh"
#include "attention/sm90/producer.cuh"
#include "attention/sm90/shared_storage.cuh"
#include "attention/sm90/tile_scheduler.cuh"
#include "attention/sm90/tma.cuh"
#include "attention/sm90/wgmma.cuh"
#include "common/mma_sm80.cuh"

namespace proxyattn::cuda::attention::sm90 {

template <typename Traits>
__global__ void __launch_bounds__(Traits::kThreads, 1)
    attention_kernel(const __grid_constant__ Params params, const __grid_constant__ CUtensorMap q_map,
                     const __grid_constant__ CUtensorMap k_map, const __grid_constant__ CUtensorMap v_map) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(kTileAlignment) unsigned char smem_bytes[];
  SharedStorage<Traits>& smem = *reinterpret_cast<SharedStorage<Traits>*>(smem_bytes);
  constexpr int kConsumers = Traits::kConsumers;
  if (smem_address(smem_bytes) % kTileAlignment != 0) __trap();  // the swizzle atoms need it

  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int role = warp_uniform(warp / kWarpsPerGroup);  // 0: producer, 1 + c: consumer c
  const int64_t items = int64_t(params.num_rows) * params.num_kv_heads * params.slots_per_row;

  // ---- Barriers, then the roles, each walking the items the producer takes.
  if (threadIdx.x == 0) init_barriers(smem);
  __syncthreads();

  Ring<Traits::kStages> ring;
  Ring<kItemSlots> item_ring;
  if (role == 0) {
    registers_release<Traits::kProducerRegisters>();
    // Thread 0 loads (TMA); with kRankHeads a warp of its own decodes the items (ranking each
    // one's heads with its lanes) and hands them to thread 0 through the item ring, as to
    // the consumers; else thread 0 decodes them too. The rest of the warpgroup leaves. A
    // decoding warp that also walked the tiles (lane 0 issuing) measures 8-11% slower at
    // short rows, lane 0 alone walking while the other lanes wait slower still
    // (bench/results/attention-sm90-v21-*, -v22-leader-*; docs/history.md).
    uint32_t q_phase[kConsumers] = {};
    CtaWork cta;
    GroupWork group[kConsumers];
    if (threadIdx.x == 0) {
      tma_prefetch_descriptor(&q_map);
      tma_prefetch_descriptor(&k_map);
      tma_prefetch_descriptor(&v_map);
    }
    if constexpr (Traits::kRankHeads) {
      if (warp == kDecoderWarp) {
        run_decoder<Traits>(smem, params, items, item_ring, cta, group);
      } else if (threadIdx.x == 0) {
        for (int slot_index; receive_item<Traits>(smem, item_ring, cta, group, slot_index);) {
          if (cta.max_count > 0)
            produce_item<Traits>(smem, params, cta, group, ring, q_phase, &q_map, &k_map, &v_map);
          item_loaded<Traits>(smem, slot_index);
        }
      }
    } else if (threadIdx.x == 0) {
      for (bool first = true; take_item<Traits>(smem, params, items, first, item_ring, cta, group) < items;
           first = false)
        if (cta.max_count > 0)
          produce_item<Traits>(smem, params, cta, group, ring, q_phase, &q_map, &k_map, &v_map);
    }
    return;
  }
  registers_acquire<Traits::kConsumerRegisters>();
  const int consumer = role - 1;
  const Turns turns = Turns::of<kConsumers>(params, consumer);
  turns.open<kConsumers>(consumer);
  uint32_t q_phase = 0;
  for (ConsumerItem item; receive_consumer_item<Traits>(smem, item_ring, consumer, lane, item);)
    consume_item<Traits>(smem, params, params.seqs[item.seq], item.max_count > 0, item.mine, consumer, turns, ring,
                         q_phase);
  turns.close(consumer);
#endif
}

}  // namespace proxyattn::cuda::attention::sm90
