// Progress of a long command on stderr, one line a step: "proxyattn demo: dense attention ...
// 21.7 s". On a terminal the line counts the seconds while the step runs; elsewhere (a log, a
// pipe) it is written once the step is done. stdout keeps the results alone.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>

namespace proxyattn::tools {

class Progress {
 public:
  // prefix: "proxyattn demo"; enabled false (--quiet) writes nothing.
  Progress(std::string prefix, bool enabled);
  ~Progress();  // ends a step left open by an exception
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  // Runs fn as the step `what`; returns its seconds.
  template <typename F>
  double step(const std::string& what, F&& fn) {
    begin(what);
    fn();
    return end();
  }
  void begin(const std::string& what);
  double end();  // the seconds since begin

 private:
  void tick();
  void stop_ticker();

  const std::string prefix_;
  const bool enabled_, terminal_;
  std::string what_;
  bool open_ = false, stop_ = false;
  std::chrono::steady_clock::time_point start_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::thread ticker_;
};

}  // namespace proxyattn::tools
