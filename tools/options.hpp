// Command-line options of the proxyattn tool: "--name value" or "--name=value".
#pragma once

#include <map>
#include <string>
#include <vector>

namespace proxyattn::tools {

class Options {
 public:
  // Parses args; flags named in `switches` take no value. Returns false with `error` set
  // on a malformed or unknown option (known = names this command accepts).
  bool parse(const std::vector<std::string>& args, const std::vector<std::string>& known,
             const std::vector<std::string>& switches, std::string& error);

  bool has(const std::string& name) const { return values_.count(name) != 0; }
  // Typed getters: false with `error` set when the value does not parse or is out of range.
  bool get_int(const std::string& name, long long low, long long high, long long& out,
               std::string& error) const;
  bool get_double(const std::string& name, double low, double high, double& out,
                  std::string& error) const;
  std::string get_string(const std::string& name, const std::string& fallback) const;

 private:
  std::map<std::string, std::string> values_;
};

}  // namespace proxyattn::tools
