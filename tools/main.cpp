// proxyattn: command-line entry point.
#include <cstdio>
#include <string>
#include <vector>

#include "commands.hpp"
#include "proxyattn/proxyattn.h"

namespace {
void print_help() {
  std::printf(
      "proxyattn %d.%d.%d: ProxyAttn block-sparse attention for long-prompt prefill\n\n"
      "usage: proxyattn <command> [options]\n\n"
      "commands:\n"
      "  demo    estimate + block-sparse attention on the embedded structured input,\n"
      "          compared with dense attention (budgets, density, mass recall, error, time)\n"
      "  help    this text; 'proxyattn <command> --help' describes a command\n",
      PROXYATTN_VERSION_MAJOR, PROXYATTN_VERSION_MINOR, PROXYATTN_VERSION_PATCH);
}
}  // namespace

int main(int argc, char** argv) {
  using namespace proxyattn::tools;
  if (argc < 2) {
    print_help();
    return kExitUsage;
  }
  const std::string command = argv[1];
  const std::vector<std::string> args(argv + 2, argv + argc);
  if (command == "help" || command == "--help" || command == "-h") {
    print_help();
    return kExitOk;
  }
  if (command == "demo") return run_demo(args);
  if (command == "bench") return run_bench(args);
  std::fprintf(stderr, "proxyattn: unknown command '%s' (try 'proxyattn help')\n", command.c_str());
  return kExitUsage;
}
