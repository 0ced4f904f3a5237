// Stream source: chunk by chunk into the writer.
#include "daemon/ingest/stream_source.h"

#include "daemon/base/status.h"

namespace ckptd::ingest {

absl::Status StreamSource::CopyTo(const ByteWriter& write) {
  while (true) {
    CKPTD_ASSIGN_OR_RETURN(bool more, stream_->Next(write));
    if (!more) return absl::OkStatus();
  }
}

}  // namespace ckptd::ingest
