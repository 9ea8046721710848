// proxyattn bench: the library alone (no PyTorch) on the structured input: dense attention,
// estimation, block-sparse attention and the whole call, per sequence length and gamma, on
// the GPU (CUDA events) or the CPU (steady clock); a table and a JSON results file.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "bench_device.hpp"
#include "commands.hpp"
#include "options.hpp"
#include "progress.hpp"
#include "proxyattn/proxyattn.hpp"

namespace proxyattn::tools {
namespace {

struct Shape {
  const char* name;
  int32_t q_heads, kv_heads, head_dim, groups;
};
// Llama-3.1-8B with one proxy; Qwen2.5-7B with one proxy per KV head.
constexpr Shape kShapes[] = {{"llama3.1-8b", 32, 8, 128, 1}, {"qwen2.5-7b", 28, 4, 128, 4}};
const std::vector<long long> kGpuSizes = {8192, 16384, 32768, 65536, 131072};
const std::vector<long long> kCpuSizes = {4096, 8192};
constexpr int kGpuRepeats = 5, kGpuWarmup = 2, kCpuRepeats = 1, kCpuWarmup = 0;
constexpr long long kMaxTokens = 1 << 22;

struct BenchSettings {
  std::string device = "auto", shape = "llama3.1-8b", out, anchor_mode, budget_rule;
  std::vector<long long> sizes;
  std::vector<double> gammas = {0.90, 0.95};
  long long repeats = -1, warmup = -1, threads = 0, seed = 1, budget_rows = 0;  // 0: the default
  double ranked_slack = 0;  // 0: the default
  bool dense = true, quiet = false;
};

const std::vector<std::string> kValueOptions = {"device", "shape", "sizes", "gammas", "repeats", "warmup",
                                                "threads", "seed", "out", "anchor-mode", "budget-rows",
                                                "budget-rule", "ranked-slack"};

// --anchor-mode's names of pa_anchor_mode.
const char* anchor_mode_name(pa_anchor_mode m) { return m == PA_ANCHORS_ON_TOP ? "on_top" : "in_budget"; }
// --budget-rule's names of pa_budget_rule.
const char* budget_rule_name(pa_budget_rule r) { return r == PA_BUDGET_RULE_RANKED ? "ranked" : "paper"; }
constexpr double kMaxRankedSlack = 1e6;

std::string json_number(double x) {
  if (!std::isfinite(x)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", x);
  return buf;
}

// A comma-separated list of numbers in (low, high] (low_open) or [low, high]; integers only
// when T is integral.
template <typename T>
bool parse_list(const std::string& name, const std::string& text, double low, bool low_open, double high,
                std::vector<T>& out, std::string& error) {
  out.clear();
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    char* end = nullptr;
    const double x = std::strtod(item.c_str(), &end);
    const bool in_range = (low_open ? x > low : x >= low) && x <= high;
    const bool integral_ok = !std::is_integral<T>::value || x == std::floor(x);
    if (item.empty() || *end != '\0' || !in_range || !integral_ok) {
      error = "--" + name + " " + text + ": '" + item + "' is not " +
              (std::is_integral<T>::value ? "an integer" : "a number") + " in " + (low_open ? "(" : "[") +
              json_number(low) + ", " + json_number(high) + "]";
      return false;
    }
    out.push_back(T(x));
  }
  if (out.empty()) error = "--" + name + ": empty list";
  return !out.empty();
}

bool parse_settings(const std::vector<std::string>& args, BenchSettings& s, std::string& error) {
  Options o;
  if (!o.parse(args, kValueOptions, {"help", "no-dense", "quiet"}, error)) return false;
  s.device = o.get_string("device", s.device);
  s.shape = o.get_string("shape", s.shape);
  s.out = o.get_string("out", "");
  s.dense = !o.has("no-dense");
  s.quiet = o.has("quiet");
  if (s.device != "auto" && s.device != "gpu" && s.device != "cpu") {
    error = "--device " + s.device + ": expected auto, gpu or cpu";
    return false;
  }
  s.anchor_mode = o.get_string("anchor-mode", "");
  if (!s.anchor_mode.empty() && s.anchor_mode != "in_budget" && s.anchor_mode != "on_top") {
    error = "--anchor-mode " + s.anchor_mode + ": expected in_budget or on_top";
    return false;
  }
  s.budget_rule = o.get_string("budget-rule", "");
  if (!s.budget_rule.empty() && s.budget_rule != "paper" && s.budget_rule != "ranked") {
    error = "--budget-rule " + s.budget_rule + ": expected paper or ranked";
    return false;
  }
  if (std::none_of(std::begin(kShapes), std::end(kShapes), [&](const Shape& x) { return s.shape == x.name; })) {
    error = "--shape " + s.shape + ": expected llama3.1-8b or qwen2.5-7b";
    return false;
  }
  return (!o.has("sizes") || parse_list("sizes", o.get_string("sizes", ""), 1, false, kMaxTokens, s.sizes, error)) &&
         (!o.has("gammas") || parse_list("gammas", o.get_string("gammas", ""), 0, true, 1, s.gammas, error)) &&
         o.get_int("repeats", 1, 1000, s.repeats, error) && o.get_int("warmup", 0, 1000, s.warmup, error) &&
         o.get_int("threads", 0, 4096, s.threads, error) && o.get_int("seed", 0, 1LL << 62, s.seed, error) &&
         o.get_int("budget-rows", 1, PA_MAX_BUDGET_ROWS, s.budget_rows, error) &&
         o.get_double("ranked-slack", 1, kMaxRankedSlack, s.ranked_slack, error);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

struct GammaRow {
  double gamma, density, estimate_ms, attend_ms, forward_ms, recall;
  int anchor_blocks;  // the plan's resolved anchor_blocks (the default: auto)
  pa_anchor_mode anchor_mode;
  int budget_rows;
  pa_budget_rule budget_rule;
  float ranked_slack;
};
struct SizeRow {
  long long n;
  double dense_ms;  // NaN with --no-dense
  std::vector<GammaRow> gammas;
};

// One sequence length: inputs generated on the host, uploaded once, every call timed on them.
SizeRow run_size(BenchDevice& dev, const Shape& shape, long long n, const BenchSettings& s, int repeats,
                 int warmup, Progress& progress) {
  const std::string at = "N=" + std::to_string(n) + ": ";
  Batch batch({int32_t(n)}, shape.q_heads, shape.kv_heads, shape.head_dim, PA_DTYPE_BFLOAT16);
  const pa_problem& p = batch.problem();
  const size_t q_bytes = size_t(n) * shape.q_heads * shape.head_dim * 2;
  const size_t kv_bytes = size_t(n) * shape.kv_heads * shape.head_dim * 2;
  const size_t lse_bytes = size_t(n) * shape.q_heads * sizeof(float);
  std::vector<std::byte> hq(q_bytes), hk(kv_bytes), hv(kv_bytes);
  const pa_synth_params synth = pa_synth_default(uint64_t(s.seed));
  progress.step(at + "generating the input",
                [&] { check(pa_synth_generate(&p, &synth, hq.data(), hk.data(), hv.data())); });
  DeviceBuffer q(dev, q_bytes), k(dev, kv_bytes), v(dev, kv_bytes), o(dev, q_bytes);
  DeviceBuffer lse_sparse(dev, lse_bytes), lse_dense(dev, lse_bytes);
  dev.upload(q.get(), hq.data(), q_bytes);
  dev.upload(k.get(), hk.data(), kv_bytes);
  dev.upload(v.get(), hv.data(), kv_bytes);
  pa_tensor tq = pa_tensor_contiguous(q.get(), shape.q_heads, shape.head_dim);
  pa_tensor tk = pa_tensor_contiguous(k.get(), shape.kv_heads, shape.head_dim);
  pa_tensor tv = pa_tensor_contiguous(v.get(), shape.kv_heads, shape.head_dim);
  pa_tensor to = pa_tensor_contiguous(o.get(), shape.q_heads, shape.head_dim);

  auto timed = [&](const std::function<void()>& fn) {
    for (int i = 0; i < warmup; ++i) dev.time_ms(fn);
    std::vector<double> t;
    for (int i = 0; i < repeats; ++i) t.push_back(dev.time_ms(fn));
    return median(t);
  };
  SizeRow row{n, std::nan(""), {}};
  const float scale = 1.0f / std::sqrt(float(shape.head_dim));
  std::vector<float> dense_lse(size_t(n) * shape.q_heads), sparse_lse(dense_lse.size());
  progress.step(at + "dense attention", [&] {
    if (s.dense) row.dense_ms = timed([&] { dense_attention(p, scale, tq, tk, tv, to, nullptr, dev.stream()); });
    dense_attention(p, scale, tq, tk, tv, to, static_cast<float*>(lse_dense.get()), dev.stream());
    dev.download(dense_lse.data(), lse_dense.get(), lse_bytes);
  });

  for (double gamma : s.gammas) {
    pa_config config = pa_config_default(shape.head_dim);
    config.gamma = float(gamma);
    config.num_proxy_groups = shape.groups;
    if (!s.anchor_mode.empty()) config.anchor_mode = s.anchor_mode == "on_top" ? PA_ANCHORS_ON_TOP : PA_ANCHORS_IN_BUDGET;
    if (s.budget_rows > 0) config.budget_rows = int32_t(s.budget_rows);
    if (!s.budget_rule.empty()) config.budget_rule = s.budget_rule == "ranked" ? PA_BUDGET_RULE_RANKED : PA_BUDGET_RULE_PAPER;
    if (s.ranked_slack > 0) config.ranked_slack = float(s.ranked_slack);
    size_t plan_bytes = 0, ws_bytes = 0;
    check(pa_plan_bytes(&p, &config, &plan_bytes));
    check(pa_workspace_bytes(&p, &config, &ws_bytes));
    DeviceBuffer storage(dev, plan_bytes), workspace(dev, std::max<size_t>(ws_bytes, 1));
    Plan plan(p, config, storage.get(), plan_bytes);
    pa_config effective{};
    check(pa_plan_get_config(plan.get(), &effective));
    GammaRow g{gamma, 0, 0, 0, 0, 0, effective.anchor_blocks, effective.anchor_mode, effective.budget_rows,
               effective.budget_rule, effective.ranked_slack};
    progress.step(at + "gamma " + json_number(gamma) + ": estimate, attend, forward", [&] {
      g.estimate_ms = timed([&] { plan.estimate(tq, tk, workspace.get(), ws_bytes, dev.stream()); });
      g.attend_ms = timed([&] { plan.attend(tq, tk, tv, to, nullptr, dev.stream()); });
      g.forward_ms = timed([&] { plan.forward(tq, tk, tv, to, nullptr, workspace.get(), ws_bytes, dev.stream()); });
      plan.attend(tq, tk, tv, to, static_cast<float*>(lse_sparse.get()), dev.stream());
      dev.download(sparse_lse.data(), lse_sparse.get(), lse_bytes);
    });
    double recall = 0.0;
    for (size_t i = 0; i < sparse_lse.size(); ++i) recall += std::exp(double(sparse_lse[i]) - dense_lse[i]);
    g.recall = recall / double(sparse_lse.size());
    plan.check_invariants();
    g.density = plan.stats().density;
    row.gammas.push_back(g);
  }
  return row;
}

void write_json(const std::string& path, const std::string& device, const Shape& shape, int repeats, int warmup,
                const std::vector<SizeRow>& rows) {
  std::ofstream f(path);
  if (!f) throw std::runtime_error("--out " + path + ": cannot open for writing");
  char date[16];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%d", std::gmtime(&now));
  f << "{\n \"benchmark\": \"proxyattn bench\",\n \"date\": \"" << date << "\",\n \"device\": \"" << device
    << "\",\n \"version\": \"" << PROXYATTN_VERSION_MAJOR << "." << PROXYATTN_VERSION_MINOR << "."
    << PROXYATTN_VERSION_PATCH << "\",\n \"shape\": {\"name\": \"" << shape.name << "\", \"num_q_heads\": "
    << shape.q_heads << ", \"num_kv_heads\": " << shape.kv_heads << ", \"head_dim\": " << shape.head_dim
    << ", \"num_proxy_groups\": " << shape.groups << ", \"dtype\": \"bfloat16\"},\n"
    << " \"input\": \"structured (pa_synth_generate)\",\n \"timing\": \"median of " << repeats << " after "
    << warmup << " warm-up\",\n \"results\": [";
  for (size_t i = 0; i < rows.size(); ++i) {
    f << (i ? "," : "") << "\n  {\"N\": " << rows[i].n << ", \"dense_ms\": " << json_number(rows[i].dense_ms)
      << ", \"gammas\": [";
    for (size_t j = 0; j < rows[i].gammas.size(); ++j) {
      const GammaRow& g = rows[i].gammas[j];
      f << (j ? ", " : "") << "{\"gamma\": " << json_number(g.gamma) << ", \"density\": "
        << json_number(g.density) << ", \"estimate_ms\": " << json_number(g.estimate_ms)
        << ", \"attend_ms\": " << json_number(g.attend_ms) << ", \"forward_ms\": " << json_number(g.forward_ms)
        << ", \"mass_recall\": " << json_number(g.recall) << ", \"anchor_blocks\": " << g.anchor_blocks
        << ", \"anchor_mode\": \"" << anchor_mode_name(g.anchor_mode) << "\", \"budget_rows\": " << g.budget_rows
        << ", \"budget_rule\": \"" << budget_rule_name(g.budget_rule) << "\", \"ranked_slack\": "
        << json_number(g.ranked_slack) << "}";
    }
    f << "]}";
  }
  f << "\n ]\n}\n";
}

}  // namespace

void print_bench_help() {
  std::printf(
      "usage: proxyattn bench [options]\n\n"
      "Times the library alone on the structured input: dense attention, estimation,\n"
      "block-sparse attention and the whole call (estimate + attend), per sequence length and\n"
      "gamma, bf16, one sequence; prints density, mass recall and the speedup over our dense.\n"
      "Comparisons with cuDNN, FlashAttention-2 and FlexAttention: python -m proxyattn.bench.\n\n"
      "options (default):\n"
      "  --device D      auto, gpu or cpu (auto: the GPU when there is one)\n"
      "  --shape S       llama3.1-8b (32 Q / 8 KV, d=128, g=1) or qwen2.5-7b (28/4, g=4) (llama3.1-8b)\n"
      "  --sizes LIST    sequence lengths (GPU 8192,...,131072; CPU 4096,8192)\n"
      "  --gammas LIST   (0.90,0.95)\n"
      "  --repeats R     timed calls, median reported (GPU 5, CPU 1)\n"
      "  --warmup W      untimed calls first (GPU 2, CPU 0)\n"
      "  --no-dense      skip timing dense attention\n"
      "  --anchor-mode M in_budget or on_top (the library's default)\n"
      "  --budget-rows R step 5's query blocks, 1-16 (the library's default)\n"
      "  --budget-rule U paper or ranked (the library's default)\n"
      "  --ranked-slack S the ranked rule's s >= 1, target 1 - s (1 - gamma) (the library's default)\n"
      "  --seed S        input seed (1)\n"
      "  --threads T     CPU threads, 0 = all (0)\n"
      "  --out FILE      also write the results as JSON\n"
      "  --quiet         no progress lines on stderr\n"
      "  --help          this text\n");
}

int run_bench(const std::vector<std::string>& args) {
  BenchSettings s;
  std::string error;
  if (!parse_settings(args, s, error)) {
    std::fprintf(stderr, "proxyattn bench: %s (see 'proxyattn bench --help')\n", error.c_str());
    return kExitUsage;
  }
  if (std::find(args.begin(), args.end(), "--help") != args.end()) {
    print_bench_help();
    return kExitOk;
  }
  try {
    std::string why;
    std::unique_ptr<BenchDevice> dev;
    if (s.device != "cpu") dev = make_cuda_device(why);
    if (!dev && s.device == "gpu") {
      std::fprintf(stderr, "proxyattn bench: --device gpu: %s; --device cpu runs the CPU backend\n", why.c_str());
      return kExitFailure;
    }
    if (!dev) dev = make_host_device();
    check(pa_set_num_threads(int32_t(s.threads)));
    const Shape& shape = *std::find_if(std::begin(kShapes), std::end(kShapes),
                                       [&](const Shape& x) { return s.shape == x.name; });
    if (s.sizes.empty()) s.sizes = dev->is_gpu() ? kGpuSizes : kCpuSizes;
    const int repeats = int(s.repeats > 0 ? s.repeats : dev->is_gpu() ? kGpuRepeats : kCpuRepeats);
    const int warmup = int(s.warmup >= 0 ? s.warmup : dev->is_gpu() ? kGpuWarmup : kCpuWarmup);
    std::printf("proxyattn bench on %s: %s (%d Q / %d KV heads, d=%d, g=%d), bf16, structured input seed %lld, "
                "median of %d after %d warm-up\n\n",
                dev->name().c_str(), shape.name, shape.q_heads, shape.kv_heads, shape.head_dim, shape.groups,
                s.seed, repeats, warmup);
    std::printf("%8s %6s %8s %12s %12s %12s %12s %8s %9s\n", "N", "gamma", "density", "estimate ms",
                "attend ms", "total ms", "dense ms", "recall", "x dense");
    std::fflush(stdout);
    std::vector<SizeRow> rows;
    Progress progress("proxyattn bench", !s.quiet);
    for (long long n : s.sizes) {
      rows.push_back(run_size(*dev, shape, n, s, repeats, warmup, progress));
      for (const GammaRow& g : rows.back().gammas) {
        std::printf("%8lld %6.2f %8.3f %12.3f %12.3f %12.3f %12.3f %8.4f %9.2f\n", n, g.gamma, g.density,
                    g.estimate_ms, g.attend_ms, g.forward_ms, rows.back().dense_ms, g.recall,
                    rows.back().dense_ms / g.forward_ms);
      }
      std::fflush(stdout);
    }
    if (!s.out.empty()) {
      write_json(s.out, dev->name(), shape, repeats, warmup, rows);
      std::printf("\nwrote %s\n", s.out.c_str());
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "proxyattn bench: %s\n", e.what());
    return kExitFailure;
  }
  return kExitOk;
}

}  // namespace proxyattn::tools
