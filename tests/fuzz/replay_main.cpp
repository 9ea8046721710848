// A driver for fuzz_capi.cpp without libFuzzer (any compiler): replays the files and folders
// given, then runs a bounded loop of random mutations of them (no coverage guidance: it is the
// corpus replay of every build, and a smoke run where clang is missing).
//   fuzz_capi_replay [-runs=N] [-seed=S] FILE_OR_DIR...
// An input that breaks an invariant aborts; it is written first to fuzz-replay-crash.bin.
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv);
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

const std::vector<uint8_t>* g_current = nullptr;

void dump_current(int sig) {
  if (g_current != nullptr) {
    const int fd = ::open("fuzz-replay-crash.bin", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      ssize_t unused = ::write(fd, g_current->data(), g_current->size());
      (void)unused;
      ::close(fd);
    }
    const char msg[] = "fuzz_capi_replay: the failing input is in fuzz-replay-crash.bin\n";
    ssize_t unused = ::write(2, msg, sizeof msg - 1);
    (void)unused;
  }
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

std::vector<uint8_t> read_file(const std::filesystem::path& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

void run(const std::vector<uint8_t>& input) {
  g_current = &input;
  LLVMFuzzerTestOneInput(input.data(), input.size());
  g_current = nullptr;
}

void mutate(std::vector<uint8_t>& x, std::mt19937_64& rng) {
  const int edits = 1 + int(rng() % 4);
  for (int e = 0; e < edits; ++e) {
    const size_t at = x.empty() ? 0 : rng() % x.size();
    switch (rng() % 4) {
      case 0: if (!x.empty()) x[at] ^= uint8_t(1u << (rng() % 8)); break;
      case 1: if (!x.empty()) x[at] = uint8_t(rng()); break;
      case 2: if (x.size() < 512) x.insert(x.begin() + at, uint8_t(rng())); break;
      case 3: if (!x.empty()) x.erase(x.begin() + at); break;
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  long runs = 0;
  uint64_t seed = 1;
  std::vector<std::vector<uint8_t>> corpus;
  LLVMFuzzerInitialize(&argc, &argv);
  std::signal(SIGABRT, dump_current);
  std::signal(SIGSEGV, dump_current);
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("-runs=", 0) == 0) { runs = std::atol(arg.c_str() + 6); continue; }
    if (arg.rfind("-seed=", 0) == 0) { seed = std::strtoull(arg.c_str() + 6, nullptr, 10); continue; }
    const std::filesystem::path path(arg);
    if (std::filesystem::is_directory(path)) {
      for (const auto& entry : std::filesystem::directory_iterator(path))
        if (entry.is_regular_file()) corpus.push_back(read_file(entry.path()));
    } else if (std::filesystem::is_regular_file(path)) {
      corpus.push_back(read_file(path));
    } else {
      std::fprintf(stderr, "fuzz_capi_replay: %s: no such file or folder\n", arg.c_str());
      return 2;
    }
  }
  for (const auto& input : corpus) run(input);
  std::mt19937_64 rng(seed);
  for (long r = 0; r < runs; ++r) {
    std::vector<uint8_t> x = corpus.empty() ? std::vector<uint8_t>() : corpus[rng() % corpus.size()];
    mutate(x, rng);
    run(x);
  }
  std::printf("fuzz_capi_replay: %zu corpus inputs and %ld mutations (seed %llu) ran\n", corpus.size(), runs,
              static_cast<unsigned long long>(seed));
  return 0;
}
