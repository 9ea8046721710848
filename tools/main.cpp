// proxyattn: command-line entry point.
#include <cstdio>
#include <new>
#include <cstring>
#include <string>
#include <vector>

#include "commands.hpp"
#include "proxyattn/proxyattn.h"

namespace {
using namespace proxyattn::tools;

// Every command, in the order `proxyattn help` lists them: the list that dispatches is the
// list the help prints, so that no command goes unlisted.
struct Command {
  const char* name;
  const char* summary;  // lines after the first indented by the table
  int (*run)(const std::vector<std::string>& args);
};
constexpr Command kCommands[] = {
    {"demo",
     "estimate + block-sparse attention on the embedded structured input,\n"
     "compared with dense attention (budgets, density, mass recall, error, time)",
     run_demo},
    {"bench",
     "times the library alone on the GPU or the CPU: dense attention, estimation,\n"
     "block-sparse attention, per sequence length and gamma (a table, JSON with --out)",
     run_bench},
};

void print_help() {
  std::printf("proxyattn %d.%d.%d: ProxyAttn block-sparse attention for long-prompt prefill\n\n"
              "usage: proxyattn <command> [options]\n\ncommands:\n",
              PROXYATTN_VERSION_MAJOR, PROXYATTN_VERSION_MINOR, PROXYATTN_VERSION_PATCH);
  for (const Command& c : kCommands) {
    std::printf("  %-7s ", c.name);
    for (const char* p = c.summary; *p != '\0'; ++p) {
      std::putchar(*p);
      if (*p == '\n') std::printf("          ");
    }
    std::putchar('\n');
  }
  std::printf("  help    this text; 'proxyattn <command> --help' describes a command\n");
}
}  // namespace

int main(int argc, char** argv) {
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
  for (const Command& c : kCommands) {
    if (command != c.name) continue;
    // The commands' own buffers (inputs, outputs, plans) are host vectors: a size the machine
    // cannot hold ends the command with a message, not an abort.
    try {
      return c.run(args);
    } catch (const std::bad_alloc&) {
      std::fprintf(stderr, "proxyattn %s: out of host memory for these sizes (try a smaller --seq-len)\n",
                   c.name);
      return kExitFailure;
    }
  }
  std::fprintf(stderr, "proxyattn: unknown command '%s' (try 'proxyattn help')\n", command.c_str());
  return kExitUsage;
}
