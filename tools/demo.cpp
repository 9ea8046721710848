// proxyattn demo: the whole pipeline on the embedded structured input, against dense.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "commands.hpp"
#include "options.hpp"
#include "progress.hpp"
#include "proxyattn/proxyattn.hpp"
#include "proxyattn/proxyattn_tuning.h"

namespace proxyattn::tools {
namespace {

struct DemoSettings {
  long long seq_len = 16384, q_heads = 8, kv_heads = 2, head_dim = 128, groups = 1, seed = 1;
  long long block = 128, stride = 4, min_budget = 2048, threads = 0, needles = 4;
  long long anchors = PA_ANCHOR_BLOCKS_AUTO;
  double gamma = 0.95;
  std::string dtype = "bf16", budget_mode = "absolute";
  bool quiet = false;
};

const std::vector<std::string> kValueOptions = {
    "seq-len", "q-heads", "kv-heads", "head-dim", "gamma", "groups", "seed", "block", "stride",
    "min-budget", "budget-mode", "dtype", "threads", "needles", "anchors"};

bool parse_settings(const std::vector<std::string>& args, DemoSettings& s, std::string& error) {
  Options o;
  if (!o.parse(args, kValueOptions, {"help", "quiet"}, error)) return false;
  if (o.has("help")) return true;
  s.quiet = o.has("quiet");
  constexpr long long kMaxTokens = 1 << 22;  // keeps the dense comparison within a CPU's reach
  return o.get_int("seq-len", 1, kMaxTokens, s.seq_len, error) &&
         o.get_int("q-heads", 1, 256, s.q_heads, error) &&
         o.get_int("kv-heads", 1, 256, s.kv_heads, error) &&
         o.get_int("head-dim", 4, 256, s.head_dim, error) &&
         o.get_double("gamma", 0.0, 1.0, s.gamma, error) &&
         o.get_int("groups", 1, 256, s.groups, error) &&
         o.get_int("seed", 0, (1LL << 62), s.seed, error) &&
         o.get_int("block", 1, 1024, s.block, error) &&
         o.get_int("stride", 1, 1024, s.stride, error) &&
         o.get_int("min-budget", 0, 1LL << 30, s.min_budget, error) &&
         o.get_int("threads", 0, 4096, s.threads, error) &&
         o.get_int("needles", 0, 1000, s.needles, error) &&
         o.get_int("anchors", PA_ANCHOR_BLOCKS_AUTO, PA_MAX_ANCHOR_BLOCKS, s.anchors, error) &&
         [&] {
           s.dtype = o.get_string("dtype", s.dtype);
           s.budget_mode = o.get_string("budget-mode", s.budget_mode);
           if (s.dtype != "bf16" && s.dtype != "fp16" && s.dtype != "fp32") {
             error = "--dtype " + s.dtype + ": expected bf16, fp16 or fp32";
             return false;
           }
           if (s.budget_mode != "absolute" && s.budget_mode != "proportional") {
             error = "--budget-mode " + s.budget_mode + ": expected absolute or proportional";
             return false;
           }
           return true;
         }();
}

pa_dtype dtype_of(const std::string& name) {
  return name == "fp32" ? PA_DTYPE_FLOAT32 : name == "fp16" ? PA_DTYPE_FLOAT16 : PA_DTYPE_BFLOAT16;
}

std::vector<float> to_float(pa_dtype dtype, const std::vector<std::byte>& raw, int64_t count) {
  std::vector<float> out(count);
  check(pa_to_float32(dtype, raw.data(), count, out.data()));
  return out;
}

}  // namespace

void print_demo_help() {
  std::printf(
      "usage: proxyattn demo [options]\n\n"
      "Runs ProxyAttn (estimate + block-sparse attention) on the embedded structured input\n"
      "(sinks, local band, vertical columns, slash diagonals, retrieval needles) and dense\n"
      "attention on the same input, then prints per-head budgets, density, mass recall,\n"
      "output error against dense, and the times.\n\n"
      "options (default):\n"
      "  --seq-len N        tokens (16384)\n"
      "  --q-heads H        query heads (8)\n"
      "  --kv-heads H       key/value heads, divides q-heads (2)\n"
      "  --head-dim D       head dimension (128)\n"
      "  --dtype T          bf16, fp16 or fp32 (bf16)\n"
      "  --gamma G          attention mass each head's budget covers, in (0, 1] (0.95)\n"
      "  --groups G         proxy groups, divides kv-heads (1)\n"
      "  --block B          block size, 64 or 128 (128)\n"
      "  --stride S         estimation stride, 1, 2, 4, 8 or 16 (4)\n"
      "  --min-budget T     budget floor in tokens (2048)\n"
      "  --budget-mode M    absolute or proportional (absolute)\n"
      "  --anchors T        each head's anchor blocks, 0-8, -1 = auto: 32 per group (-1)\n"
      "  --needles K        retrieval needles in the input (4)\n"
      "  --seed S           input seed (1)\n"
      "  --threads T        CPU threads, 0 = all (0)\n"
      "  --quiet            no progress lines on stderr\n"
      "  --help             this text\n");
}

int run_demo(const std::vector<std::string>& args) {
  DemoSettings s;
  std::string error;
  if (!parse_settings(args, s, error)) {
    std::fprintf(stderr, "proxyattn demo: %s (see 'proxyattn demo --help')\n", error.c_str());
    return kExitUsage;
  }
  if (std::find(args.begin(), args.end(), "--help") != args.end()) {
    print_demo_help();
    return kExitOk;
  }
  try {
    check(pa_set_num_threads(int32_t(s.threads)));
    const pa_dtype dtype = dtype_of(s.dtype);
    Batch batch({int32_t(s.seq_len)}, int32_t(s.q_heads), int32_t(s.kv_heads), int32_t(s.head_dim), dtype);
    const pa_problem& p = batch.problem();
    pa_config config = pa_config_default(p.head_dim);
    config.gamma = float(s.gamma);
    config.num_proxy_groups = int32_t(s.groups);
    config.block_size = int32_t(s.block);
    config.stride = int32_t(s.stride);
    config.min_budget_tokens = int32_t(s.min_budget);
    config.dense_below = config.min_budget_tokens;
    config.budget_mode = s.budget_mode == "proportional" ? PA_BUDGET_PROPORTIONAL : PA_BUDGET_ABSOLUTE;
    config.anchor_blocks = int32_t(s.anchors);
    check(pa_config_validate(&config, &p));

    const int64_t n = p.total_tokens, hq = p.num_q_heads, d = p.head_dim;
    const size_t esize = dtype == PA_DTYPE_FLOAT32 ? 4 : 2;
    std::vector<std::byte> q(n * hq * d * esize), k(n * p.num_kv_heads * d * esize),
        v(k.size()), o_sparse(q.size()), o_dense(q.size());
    std::vector<float> lse_sparse(hq * n), lse_dense(hq * n);
    pa_synth_params synth = pa_synth_default(uint64_t(s.seed));
    synth.num_needles = int32_t(s.needles);

    // Each step on stderr as it runs: a 32K-token demo takes half a minute on a laptop.
    Progress progress("proxyattn demo", !s.quiet);
    const double t_generate = progress.step("generating the input (N=" + std::to_string(n) + ")", [&] {
      check(pa_synth_generate(&p, &synth, q.data(), k.data(), v.data()));
    });
    pa_tensor tq = pa_tensor_contiguous(q.data(), p.num_q_heads, p.head_dim);
    pa_tensor tk = pa_tensor_contiguous(k.data(), p.num_kv_heads, p.head_dim);
    pa_tensor tv = pa_tensor_contiguous(v.data(), p.num_kv_heads, p.head_dim);
    pa_tensor ts = pa_tensor_contiguous(o_sparse.data(), p.num_q_heads, p.head_dim);
    pa_tensor td = pa_tensor_contiguous(o_dense.data(), p.num_q_heads, p.head_dim);

    Plan plan = Plan::on_host(p, config);
    const double t_estimate = progress.step("estimating", [&] { plan.estimate(tq, tk); });
    const double t_sparse =
        progress.step("block-sparse attention", [&] { plan.attend(tq, tk, tv, ts, lse_sparse.data()); });
    const double t_dense = progress.step("dense attention", [&] {
      dense_attention(p, config.softmax_scale, tq, tk, tv, td, lse_dense.data());
    });
    plan.check_invariants();

    const Plan::Heads heads = plan.heads(p);
    const pa_plan_stats stats = plan.stats();
    const std::vector<float> os = to_float(dtype, o_sparse, n * hq * d);
    const std::vector<float> od = to_float(dtype, o_dense, n * hq * d);
    const int nqb = int((n + config.block_size - 1) / config.block_size);

    pa_config effective{};
    check(pa_plan_get_config(plan.get(), &effective));
    std::printf("proxyattn demo: N=%lld, %lld Q / %lld KV heads, d=%lld, %s, gamma=%.2f, g=%d, "
                "b=%d, s=%d, %s budget, %d anchor blocks a head, seed=%lld\n",
                (long long)n, (long long)hq, (long long)p.num_kv_heads, (long long)d, s.dtype.c_str(),
                s.gamma, config.num_proxy_groups, config.block_size, config.stride,
                s.budget_mode.c_str(), effective.anchor_blocks, s.seed);
    std::printf("input: structured (sinks, local band, vertical columns, slash diagonals, %d needles), "
                "generated in %.2f s\n\n", synth.num_needles, t_generate);
    std::printf("head  kv  budget K_i  needed  r_i     density  recall   out.err\n");
    double err_all = 0.0, ref_all = 0.0, recall_all = 0.0;
    for (int h = 0; h < hq; ++h) {
      double err = 0.0, ref = 0.0, recall = 0.0;
      for (int64_t t = 0; t < n; ++t) {
        for (int64_t c = 0; c < d; ++c) {
          const double a = os[(t * hq + h) * d + c], r = od[(t * hq + h) * d + c];
          err += (a - r) * (a - r);
          ref += r * r;
        }
        recall += std::exp(double(lse_sparse[h * n + t]) - double(lse_dense[h * n + t]));
      }
      err_all += err;
      ref_all += ref;
      recall_all += recall;
      std::printf("%4d %3lld  %10d  %6d  %.3f   %.4f   %.4f   %.1e\n", h,
                  (long long)(h / (hq / p.num_kv_heads)), heads.budget_blocks[h], heads.needed_blocks[h],
                  nqb > 0 ? double(heads.needed_blocks[h]) / nqb : 0.0, heads.density[h],
                  n > 0 ? recall / n : 1.0, ref > 0 ? std::sqrt(err / ref) : 0.0);
    }
    std::printf("all                                   %.4f   %.4f   %.1e\n\n", stats.density,
                n > 0 ? recall_all / (double(n) * hq) : 1.0,
                ref_all > 0 ? std::sqrt(err_all / ref_all) : 0.0);
    const unsigned threads = s.threads > 0 ? unsigned(s.threads) : std::max(1u, std::thread::hardware_concurrency());
    std::printf("time (CPU, %u threads, %s kernels): estimate %.3f s + sparse attention %.3f s = %.3f s;  "
                "dense attention %.3f s;  speedup %.2fx (attention alone %.2fx)\n",
                threads, pa_cpu_kernels(), t_estimate, t_sparse, t_estimate + t_sparse, t_dense,
                t_dense / std::max(1e-9, t_estimate + t_sparse), t_dense / std::max(1e-9, t_sparse));
    std::printf("recall = dense attention mass inside kept blocks, mean over queries;"
                " out.err = ||O_sparse - O_dense|| / ||O_dense||\n");
  } catch (const Error& e) {
    std::fprintf(stderr, "proxyattn demo: %s\n", e.what());
    return kExitFailure;
  }
  return kExitOk;
}

}  // namespace proxyattn::tools
