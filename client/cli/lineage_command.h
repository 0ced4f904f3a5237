// `ckptctl lineage UUID|RUN`: the tree of a file's or run's ancestors and
// descendants (base model -> checkpoints along each run -> exports).
#pragma once

#include <string>

#include "ckptd/v1/ckptd.pb.h"
#include "client/cli/daemon_commands.h"

namespace ckptd::cli {

// The tree as text: each run's checkpoints down one column, exports and
// runs branching from a checkpoint indented under it.
std::string RenderLineage(const v1::Lineage& lineage);

int LineageCommand(Client& client, const DaemonCommandArgs& args);

}  // namespace ckptd::cli
