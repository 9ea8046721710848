// Reading the enum fields and arguments of the C API (pa_dtype, pa_budget_mode, pa_status)
// before they are known to be valid.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace proxyattn {

// The int a caller stored in an enum of the C API, read as that int. A C caller may store any
// int there, but in C++ an enum without a fixed underlying type holds only the values of its
// enumerators' bit width (pa_dtype: 0..3): loading another one through the enum type is
// undefined behaviour (UBSan: "load of value 7, which is not a valid value for type
// 'pa_dtype'"), and a compiler may assume it never happens. The checks therefore read the
// bytes as an int32_t and compare that; the enum itself is read only once it passed.
template <typename E>
int32_t raw_value(const E& value) {
  static_assert(std::is_enum_v<E> && sizeof(E) == sizeof(int32_t), "a 32-bit enum of the C API");
  int32_t raw;
  std::memcpy(&raw, &value, sizeof raw);
  return raw;
}

}  // namespace proxyattn
