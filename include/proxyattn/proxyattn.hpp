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

// A batch of sequences of the given lengths, packed (cu_seqlens kept alive here). The library
// sees tensors as pointers and strides only and trusts the batch's token count: view() makes
// tensor views checked against it.
class Batch {
 public:
  // Lengths >= 0 adding up to less than 2^31 (Error PA_STATUS_INVALID_SEQLENS or
  // PA_STATUS_OVERFLOW otherwise).
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

  // A contiguous [total_tokens, heads, head_dim] view of a buffer of `bytes` bytes (host or
  // device), checked against the batch: the buffer must hold exactly the batch's
  // cu_seqlens.back() tokens of `heads` heads of the batch's dtype. Otherwise Error
  // (PA_STATUS_INVALID_SEQLENS) naming cu_seqlens and the tensor (`name`).
  pa_tensor view(const char* name, void* data, size_t bytes, int32_t heads) const {
    const size_t element = problem_.dtype == PA_DTYPE_FLOAT32 ? 4 : 2;
    if (heads < 1 || problem_.head_dim < 1)
      throw Error(PA_STATUS_INVALID_SHAPE, std::string(name) + ": " + std::to_string(heads) + " heads of head_dim " +
                                               std::to_string(problem_.head_dim) + ": both must be >= 1");
    const size_t row = size_t(heads) * size_t(problem_.head_dim) * element;
    const int64_t total = problem_.total_tokens;
    if (bytes % row != 0 || bytes / row != uint64_t(total)) {
      const std::string tokens = bytes % row == 0 ? std::to_string(bytes / row) + " tokens" : "not a whole number of tokens";
      throw Error(PA_STATUS_INVALID_SEQLENS,
                  "cu_seqlens[" + std::to_string(problem_.num_seqs) + "] = " + std::to_string(total) +
                      " differs from the token count of " + name + " (" + std::to_string(bytes) + " bytes: " +
                      tokens + " of " + std::to_string(heads) + " heads x " + std::to_string(problem_.head_dim) +
                      " elements of " + std::to_string(element) + " bytes)");
    }
    return pa_tensor_contiguous(data, heads, problem_.head_dim);
  }
  // Views of Q (num_q_heads) and of K or V (num_kv_heads) over a std::vector of any element
  // type (bytes: size() * sizeof(T)).
  template <typename T>
  pa_tensor q_view(std::vector<T>& buffer, const char* name = "q") const {
    return view(name, buffer.data(), buffer.size() * sizeof(T), problem_.num_q_heads);
  }
  template <typename T>
  pa_tensor kv_view(std::vector<T>& buffer, const char* name) const {
    return view(name, buffer.data(), buffer.size() * sizeof(T), problem_.num_kv_heads);
  }

 private:
  struct CuSeqlens {};
  static std::vector<int32_t> prefix_sums(const std::vector<int32_t>& lengths) {
    std::vector<int32_t> cu(lengths.size() + 1, 0);
    int64_t total = 0;
    for (size_t i = 0; i < lengths.size(); ++i) {
      if (lengths[i] < 0)
        throw Error(PA_STATUS_INVALID_SEQLENS,
                    "lengths[" + std::to_string(i) + "] = " + std::to_string(lengths[i]) + ": must be >= 0");
      total += lengths[i];
      if (total > INT32_MAX)
        throw Error(PA_STATUS_OVERFLOW, "lengths: " + std::to_string(total) + " tokens up to lengths[" +
                                            std::to_string(i) + "] exceed the int32 offsets of cu_seqlens");
      cu[i + 1] = int32_t(total);
    }
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
  Plan(const pa_problem& problem, const pa_config& config, void* storage, size_t storage_bytes)
      : num_seqs_(problem.num_seqs), num_q_heads_(problem.num_q_heads) {
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
      : plan_(std::exchange(other.plan_, nullptr)), num_seqs_(other.num_seqs_), num_q_heads_(other.num_q_heads_),
        owned_(std::move(other.owned_)), workspace_(std::move(other.workspace_)) {}
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
  Heads heads() const {
    const size_t n = size_t(num_seqs_) * num_q_heads_;
    Heads h{std::vector<int32_t>(n), std::vector<int32_t>(n), std::vector<double>(n)};
    check(pa_plan_get_heads(plan_, h.budget_blocks.data(), h.needed_blocks.data(), h.density.data()));
    return h;
  }
  // The plan's problem must be `problem` (its sizes make the arrays).
  Heads heads(const pa_problem& problem) const {
    if (problem.num_seqs != num_seqs_ || problem.num_q_heads != num_q_heads_)
      throw Error(PA_STATUS_PLAN_MISMATCH, "problem: " + std::to_string(problem.num_seqs) + " sequences of " +
                                               std::to_string(problem.num_q_heads) + " q heads, the plan has " +
                                               std::to_string(num_seqs_) + " of " + std::to_string(num_q_heads_));
    return heads();
  }
  void check_invariants() const { check(pa_plan_check(plan_)); }

 private:
  pa_plan* plan_ = nullptr;
  int32_t num_seqs_ = 0, num_q_heads_ = 0;  // the problem's, for the sizes of heads()
  std::vector<std::byte> owned_;
  std::vector<std::byte> workspace_;
};

inline void dense_attention(const pa_problem& problem, float scale, const pa_tensor& q,
                            const pa_tensor& k, const pa_tensor& v, pa_tensor& o,
                            float* lse = nullptr, void* stream = nullptr) {
  check(pa_dense_attention(&problem, scale, &q, &k, &v, &o, lse, stream));
}

}  // namespace proxyattn
