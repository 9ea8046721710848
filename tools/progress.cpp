#include "progress.hpp"

#include <unistd.h>

#include <cstdio>

namespace proxyattn::tools {

Progress::Progress(std::string prefix, bool enabled)
    : prefix_(std::move(prefix)), enabled_(enabled), terminal_(enabled && isatty(STDERR_FILENO) == 1) {}

Progress::~Progress() {
  if (open_) {
    stop_ticker();
    if (enabled_) std::fprintf(stderr, terminal_ ? "\n" : "%s: %s ... stopped\n", prefix_.c_str(), what_.c_str());
  }
}

void Progress::begin(const std::string& what) {
  if (open_) end();
  what_ = what;
  open_ = true;
  start_ = std::chrono::steady_clock::now();
  if (!terminal_) return;
  std::fprintf(stderr, "%s: %s ...", prefix_.c_str(), what_.c_str());
  std::fflush(stderr);
  stop_ = false;
  ticker_ = std::thread([this] { tick(); });
}

double Progress::end() {
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  if (!open_) return seconds;
  stop_ticker();
  open_ = false;
  if (enabled_) {
    std::fprintf(stderr, "%s%s: %s ... %.2f s\n", terminal_ ? "\r" : "", prefix_.c_str(), what_.c_str(), seconds);
    std::fflush(stderr);
  }
  return seconds;
}

// A terminal's line, rewritten each second: the step so far.
void Progress::tick() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (int s = 1; !wake_.wait_for(lock, std::chrono::seconds(1), [this] { return stop_; }); ++s) {
    std::fprintf(stderr, "\r%s: %s ... %d s", prefix_.c_str(), what_.c_str(), s);
    std::fflush(stderr);
  }
}

void Progress::stop_ticker() {
  if (!ticker_.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_one();
  ticker_.join();
}

}  // namespace proxyattn::tools
