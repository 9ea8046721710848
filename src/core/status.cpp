#include "core/status.hpp"

#include <cstdio>

namespace proxyattn {
namespace {
constexpr int kMessageCapacity = 1024;
thread_local char g_message[kMessageCapacity] = {0};
}  // namespace

pa_status fail(pa_status status, const char* format, ...) {
  va_list args;
  va_start(args, format);
  std::vsnprintf(g_message, kMessageCapacity, format, args);
  va_end(args);
  return status;
}

void clear_error() { g_message[0] = '\0'; }

const char* last_error_message() { return g_message; }

}  // namespace proxyattn
