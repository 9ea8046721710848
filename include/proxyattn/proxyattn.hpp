// proxyattn: C++ facade over the C API (header-only). Errors become proxyattn::Error;
// plans own their handle (RAII) and, for host plans, their storage.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "proxyattn/proxyattn.h"

namespace proxyattn {

class Error : public std::runtime_error {
 public:
  Error(pa_status status, const std::string& message)
      : std::runtime_error(std::string(pa_status_string(status)) + ": " + message), status_(status) {}
  pa_status status() const noexcept { return status_; }

 private:
  pa_status status_;
};

inline void check(pa_status status) {
  if (status != PA_STATUS_SUCCESS) throw Error(status, pa_last_error());
}

// A batch of sequences of the given lengths, packed (cu_seqlens kept alive here).
class Batch {
 public:
  Batch(std::vector<int32_t> lengths, int32_t num_q_heads, int32_t num_kv_heads, int32_t head_dim,
        pa_dtype dtype)
      : Batch(prefix_sums(lengths), num_q_heads, num_kv_heads, head_dim, dtype, CuSeqlens{}) {}
  // From cu_seqlens [num_seqs + 1] (at least 2 entries; validity is the library's check).
  static Batch from_cu_seqlens(std::vector<int32_t> cu_seqlens, int32_t num_q_heads,
                               int32_t num_kv_heads, int32_t head_dim, pa_dtype dtype) {
    return Batch(std::move(cu_seqlens), num_q_heads, num_kv_heads, head_dim, dtype, CuSeqlens{});
  }
  Batch(const Batch& other) : Batch(other.cu_seqlens_, other.problem_.num_q_heads,
                                    other.problem_.num_kv_heads, other.problem_.head_dim,
                                    other.problem_.dtype, CuSeqlens{}) {}
  Batch& operator=(const Batch&) = delete;

  const pa_problem& problem() const { return problem_; }
  const std::vector<int32_t>& cu_seqlens() const { return cu_seqlens_; }
  std::vector<int32_t> lengths() const {
    std::vector<int32_t> out;
    for (size_t i = 0; i + 1 < cu_seqlens_.size(); ++i) out.push_back(cu_seqlens_[i + 1] - cu_seqlens_[i]);
    return out;
  }

 private:
  struct CuSeqlens {};
  static std::vector<int32_t> prefix_sums(const std::vector<int32_t>& lengths) {
    std::vector<int32_t> cu(lengths.size() + 1, 0);
    for (size_t i = 0; i < lengths.size(); ++i) cu[i + 1] = cu[i] + lengths[i];
    return cu;
  }
  Batch(std::vector<int32_t> cu_seqlens, int32_t num_q_heads, int32_t num_kv_heads, int32_t head_dim,
        pa_dtype dtype, CuSeqlens)
      : cu_seqlens_(std::move(cu_seqlens)) {
    problem_.num_seqs = static_cast<int32_t>(cu_seqlens_.empty() ? 0 : cu_seqlens_.size() - 1);
    problem_.cu_seqlens = cu_seqlens_.data();
    problem_.total_tokens = cu_seqlens_.empty() ? 0 : cu_seqlens_.back();
    problem_.num_q_heads = num_q_heads;
    problem_.num_kv_heads = num_kv_heads;
    problem_.head_dim = head_dim;
    problem_.dtype = dtype;
  }

  std::vector<int32_t> cu_seqlens_;
  pa_problem problem_{};
};

// A plan over caller storage, or (Plan::on_host) over storage it owns on the host.
class Plan {
 public:
  Plan(const pa_problem& problem, const pa_config& config, void* storage, size_t storage_bytes) {
    check(pa_plan_create(&problem, &config, storage, storage_bytes, &plan_));
  }
  static Plan on_host(const pa_problem& problem, const pa_config& config) {
    size_t bytes = 0;
    check(pa_plan_bytes(&problem, &config, &bytes));
    std::vector<std::byte> storage(bytes);
    Plan plan(problem, config, storage.data(), bytes);
    plan.owned_ = std::move(storage);  // moving a vector keeps its buffer
    size_t workspace = 0;
    check(pa_workspace_bytes(&problem, &config, &workspace));
    plan.workspace_.resize(workspace);
    return plan;
  }
  Plan(Plan&& other) noexcept
      : plan_(std::exchange(other.plan_, nullptr)), owned_(std::move(other.owned_)),
        workspace_(std::move(other.workspace_)) {}
  Plan& operator=(Plan&&) = delete;
  Plan(const Plan&) = delete;
  ~Plan() { pa_plan_free(plan_); }

  pa_plan* get() const { return plan_; }

  // Host plans use their own workspace; device plans pass one.
  void estimate(const pa_tensor& q, const pa_tensor& k) {
    check(pa_estimate(plan_, &q, &k, workspace_.data(), workspace_.size(), nullptr));
  }
  void estimate(const pa_tensor& q, const pa_tensor& k, void* workspace, size_t bytes, void* stream) {
    check(pa_estimate(plan_, &q, &k, workspace, bytes, stream));
  }
  void attend(const pa_tensor& q, const pa_tensor& k, const pa_tensor& v, pa_tensor& o,
              float* lse = nullptr, void* stream = nullptr) const {
    check(pa_attend(plan_, &q, &k, &v, &o, lse, stream));
  }
  // estimate then attend; host plans use their own workspace.
  void forward(const pa_tensor& q, const pa_tensor& k, const pa_tensor& v, pa_tensor& o,
               float* lse = nullptr) {
    check(pa_forward(plan_, &q, &k, &v, &o, lse, workspace_.data(), workspace_.size(), nullptr));
  }
  void forward(const pa_tensor& q, const pa_tensor& k, const pa_tensor& v, pa_tensor& o, float* lse,
               void* workspace, size_t bytes, void* stream) {
    check(pa_forward(plan_, &q, &k, &v, &o, lse, workspace, bytes, stream));
  }

  pa_plan_stats stats() const {
    pa_plan_stats s{};
    check(pa_plan_get_stats(plan_, &s));
    return s;
  }
  struct Heads {
    std::vector<int32_t> budget_blocks, needed_blocks;  // [num_seqs, Hq]
    std::vector<double> density;                        // [num_seqs, Hq]
  };
  Heads heads(const pa_problem& problem) const {
    const size_t n = size_t(problem.num_seqs) * problem.num_q_heads;
    Heads h{std::vector<int32_t>(n), std::vector<int32_t>(n), std::vector<double>(n)};
    check(pa_plan_get_heads(plan_, h.budget_blocks.data(), h.needed_blocks.data(), h.density.data()));
    return h;
  }
  void check_invariants() const { check(pa_plan_check(plan_)); }

 private:
  pa_plan* plan_ = nullptr;
  std::vector<std::byte> owned_;
  std::vector<std::byte> workspace_;
};

inline void dense_attention(const pa_problem& problem, float scale, const pa_tensor& q,
                            const pa_tensor& k, const pa_tensor& v, pa_tensor& o,
                            float* lse = nullptr, void* stream = nullptr) {
  check(pa_dense_attention(&problem, scale, &q, &k, &v, &o, lse, stream));
}

}  // namespace proxyattn
