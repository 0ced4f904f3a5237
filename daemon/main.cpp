// ckptd entry point; everything lives in daemon/app.
#include "daemon/app/daemon.h"

int main(int argc, char** argv) { return ckptd::app::DaemonMain(argc, argv); }
