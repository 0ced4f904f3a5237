// Export names, on their own: the file grammar (storage/file_names.cc) and
// the client SDK need them without the profile parser and its TOML library.
#include "daemon/export/profile.h"

namespace ckptd::exports {

bool IsValidExportName(std::string_view name) {
  if (name.empty() || name.size() > 64 || name == "train") return false;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

}  // namespace ckptd::exports
