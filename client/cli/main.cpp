// ckptctl entry point; everything lives in commands.cc.
#include "client/cli/commands.h"

int main(int argc, char** argv) { return ckptd::cli::Main(argc, argv); }
