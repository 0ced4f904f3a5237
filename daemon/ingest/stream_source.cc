// Stream source: chunk by chunk into the writer.
#include "daemon/ingest/stream_source.h"

#include "daemon/base/status.h"

namespace ckptd::ingest {

absl::Status StreamSource::CopyTo(const ByteWriter& write) {
  std::string chunk;
  while (true) {
    CKPTD_ASSIGN_OR_RETURN(bool more, stream_->Next(&chunk));
    if (!more) return absl::OkStatus();
    CKPTD_TRY(write(chunk));
  }
}

}  // namespace ckptd::ingest
