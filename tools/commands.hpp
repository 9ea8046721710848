// Sub-commands of the proxyattn tool. Each returns the process exit status.
#pragma once

#include <string>
#include <vector>

namespace proxyattn::tools {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;  // the library reported an error
inline constexpr int kExitUsage = 2;    // bad command line

int run_demo(const std::vector<std::string>& args);
void print_demo_help();
int run_bench(const std::vector<std::string>& args);
void print_bench_help();

}  // namespace proxyattn::tools
