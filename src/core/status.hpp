// Error reporting shared by every layer: a thread-local message and a status value.
#pragma once

#include <cstdarg>

#include "proxyattn/proxyattn.h"

namespace proxyattn {

// Records a printf-style message for pa_last_error() and returns the status, so that a
// failing check reads `return fail(PA_STATUS_INVALID_SHAPE, "q: ...", ...);`.
pa_status fail(pa_status status, const char* format, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

// Clears the message at the start of a public call.
void clear_error();

const char* last_error_message();

}  // namespace proxyattn

// Propagates a failure: evaluates expr once and returns it when it is not a success.
#define PA_TRY(expr)                                   \
  do {                                                 \
    const pa_status pa_try_status_ = (expr);           \
    if (pa_try_status_ != PA_STATUS_SUCCESS) return pa_try_status_; \
  } while (0)
