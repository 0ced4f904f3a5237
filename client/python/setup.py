"""Builds the ckptd package with its gRPC stubs.

The metadata is in pyproject.toml; the version is ckptd.__version__. This file adds one step to build_py: the
stubs (ckptd/v1/ckptd_pb2.py, ckptd_pb2_grpc.py and their .pyi) are
generated from ckptd.proto into the build directory, so the source tree
never holds generated code.

The proto is looked for in $CKPTD_PROTO_DIR, then proto/ beside this file
(an sdist), then the repository's proto/. The generator is protoc with
grpc_python_plugin (protobuf-compiler, protobuf-compiler-grpc), the pair the
C++ build uses, else grpcio-tools' protoc (Debian 12's python3-grpc-tools
is too old for the proto's optional fields).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = os.path.join("ckptd", "v1", "ckptd.proto")


def proto_dir() -> str:
    candidates = [os.environ.get("CKPTD_PROTO_DIR", ""), os.path.join(HERE, "proto"),
                  os.path.join(HERE, "..", "..", "proto")]
    for d in candidates:
        if d and os.path.isfile(os.path.join(d, PROTO)):
            return os.path.abspath(d)
    raise SystemExit(f"ckptd: {PROTO} not found in $CKPTD_PROTO_DIR, {candidates[1]} or "
                     f"{candidates[2]}: build from the repository or an sdist")


def protoc_command(src: str, out: str) -> list[str]:
    outs = [f"--proto_path={src}", f"--python_out={out}", f"--pyi_out={out}"]
    protoc, plugin = shutil.which("protoc"), shutil.which("grpc_python_plugin")
    if protoc and plugin:
        return [protoc, *outs, f"--grpc_out={out}", f"--plugin=protoc-gen-grpc={plugin}"]
    try:
        import grpc_tools  # noqa: F401
        return [sys.executable, "-m", "grpc_tools.protoc", *outs, f"--grpc_python_out={out}"]
    except ImportError:
        raise SystemExit("ckptd: generating the gRPC stubs needs protoc and grpc_python_plugin "
                         "(Debian: protobuf-compiler, protobuf-compiler-grpc) or a grpcio-tools "
                         "whose protoc knows proto3 optional fields") from None


class BuildWithStubs(build_py):
    def run(self) -> None:
        super().run()
        src = proto_dir()
        out = os.path.abspath(self.build_lib)
        os.makedirs(os.path.join(out, "ckptd", "v1"), exist_ok=True)
        subprocess.run(protoc_command(src, out) + [os.path.join(src, PROTO)], check=True)
        with open(os.path.join(out, "ckptd", "v1", "__init__.py"), "w") as f:
            f.write('"""Generated from ckptd.proto when the package was built."""\n')


def version() -> str:
    with open(os.path.join(HERE, "ckptd", "__init__.py")) as f:
        found = re.search(r'^__version__ = "([^"]+)"$', f.read(), re.M)
    if not found:
        raise SystemExit("ckptd: no __version__ in ckptd/__init__.py")
    return found.group(1)


# Here rather than under [tool.setuptools] in pyproject.toml, which
# setuptools 66 (Debian 12) still calls beta and warns about.
setup(version=version(), packages=["ckptd"], package_data={"ckptd": ["py.typed"]},
      cmdclass={"build_py": BuildWithStubs})
