#include "options.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>

namespace proxyattn::tools {

static bool contains(const std::vector<std::string>& list, const std::string& s) {
  return std::find(list.begin(), list.end(), s) != list.end();
}

bool Options::parse(const std::vector<std::string>& args, const std::vector<std::string>& known,
                    const std::vector<std::string>& switches, std::string& error) {
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a.rfind("--", 0) != 0) {
      error = "unexpected argument '" + a + "'";
      return false;
    }
    std::string name = a.substr(2), value;
    const size_t eq = name.find('=');
    const bool inline_value = eq != std::string::npos;
    if (inline_value) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    if (contains(switches, name)) {
      if (inline_value) {
        error = "option --" + name + " takes no value";
        return false;
      }
      values_[name] = "1";
      continue;
    }
    if (!contains(known, name)) {
      error = "unknown option --" + name;
      return false;
    }
    if (!inline_value) {
      if (i + 1 >= args.size()) {
        error = "option --" + name + " needs a value";
        return false;
      }
      value = args[++i];
    }
    values_[name] = value;
  }
  return true;
}

bool Options::get_int(const std::string& name, long long low, long long high, long long& out,
                      std::string& error) const {
  const auto it = values_.find(name);
  if (it == values_.end()) return true;  // keep the default in out
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(it->second.c_str(), &end, 10);
  if (errno != 0 || end == it->second.c_str() || *end != '\0' || v < low || v > high) {
    error = "--" + name + " " + it->second + ": expected an integer in [" + std::to_string(low) +
            ", " + std::to_string(high) + "]";
    return false;
  }
  out = v;
  return true;
}

bool Options::get_double(const std::string& name, double low, double high, double& out,
                         std::string& error) const {
  const auto it = values_.find(name);
  if (it == values_.end()) return true;
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(it->second.c_str(), &end);
  if (errno != 0 || end == it->second.c_str() || *end != '\0' || !std::isfinite(v) || v < low ||
      v > high) {
    error = "--" + name + " " + it->second + ": expected a number in [" + std::to_string(low) +
            ", " + std::to_string(high) + "]";
    return false;
  }
  out = v;
  return true;
}

std::string Options::get_string(const std::string& name, const std::string& fallback) const {
  const auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second;
}

}  // namespace proxyattn::tools
