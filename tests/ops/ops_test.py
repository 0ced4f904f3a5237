#!/usr/bin/python3
"""Ops surface: the install tree (DESTDIR), the systemd unit (systemd-analyze
verify), and the Dockerfile's build steps staying the README's."""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

ARGS = None


def read(path):
    with open(path) as f:
        return f.read()


def readme_install_commands():
    text = read(os.path.join(ARGS.source, "README.md"))
    section = text.split("\n## Install", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]


def dockerfile_build_commands():
    text = read(os.path.join(ARGS.source, "docker", "Dockerfile"))
    build_stage = text.split("FROM debian:12 AS build", 1)[1].split("\nFROM ", 1)[0]
    return [m.strip() for m in re.findall(r"^RUN (.+)$", build_stage, re.M)]


class DockerDriftTest(unittest.TestCase):
    def test_build_stage_runs_exactly_the_readme_install_steps(self):
        readme = readme_install_commands()
        self.assertIn("scripts/install-deps.sh", readme)
        self.assertEqual(dockerfile_build_commands(), readme)

    def test_runtime_stage_uses_the_deps_script_and_a_non_root_user(self):
        text = read(os.path.join(ARGS.source, "docker", "Dockerfile"))
        runtime = text.split("\nFROM debian:12\n", 1)[1]
        self.assertIn("install-deps.sh --runtime", runtime)
        self.assertRegex(runtime, r"\nUSER ckptd\n")


class InstallTest(unittest.TestCase):
    def setUp(self):
        self.dest = tempfile.mkdtemp()
        r = subprocess.run(["cmake", "--install", ARGS.build], env={**os.environ, "DESTDIR": self.dest},
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)

    def tearDown(self):
        shutil.rmtree(self.dest)

    def test_destdir_tree(self):
        tree = sorted(os.path.relpath(os.path.join(d, f), self.dest)
                      for d, _, files in os.walk(self.dest) for f in files)
        print("installed tree:\n  " + "\n  ".join(tree))
        for want in ["usr/bin/ckptd", "usr/bin/ckptctl", "usr/lib/systemd/system/ckptd.service",
                     "usr/lib/sysusers.d/ckptd.conf", "usr/lib/tmpfiles.d/ckptd.conf",
                     "etc/ckptd/ckptd.toml", "usr/share/doc/ckptd/README.md",
                     "usr/share/doc/ckptd/ckptd.example.toml",
                     "usr/share/ckptd/proto/ckptd/v1/ckptd.proto"]:
            self.assertIn(want, tree)
        self.assertTrue(os.access(os.path.join(self.dest, "usr/bin/ckptd"), os.X_OK))
        unit = read(os.path.join(self.dest, "usr/lib/systemd/system/ckptd.service"))
        self.assertIn("ExecStart=/usr/bin/ckptd --config /etc/ckptd/ckptd.toml", unit)
        # The installed config is the service setup, and the daemon accepts it.
        r = subprocess.run([os.path.join(self.dest, "usr/bin/ckptd"), "--config",
                            os.path.join(self.dest, "etc/ckptd/ckptd.toml"), "--print-config"],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('listen = "unix:/run/ckptd/ckptd.sock"', r.stdout)

    def test_systemd_analyze_verify(self):
        if not shutil.which("systemd-analyze"):
            self.skipTest("systemd-analyze not installed")
        unit = os.path.join(self.dest, "usr/lib/systemd/system/ckptd.service")
        # verify resolves ExecStart= on this machine: point it at the installed binary.
        text = read(unit).replace("ExecStart=/usr/bin/ckptd",
                                         "ExecStart=" + os.path.join(self.dest, "usr/bin/ckptd"))
        local = os.path.join(self.dest, "ckptd.service")
        with open(local, "w") as f:
            f.write(text)
        r = subprocess.run(["systemd-analyze", "verify", "--man=no", local], capture_output=True,
                           text=True)
        problems = [l for l in (r.stdout + r.stderr).splitlines()
                    if l.strip() and "ckptd.service" in l]
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(problems, [], "\n".join(problems))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", required=True)
    parser.add_argument("--build", required=True)
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0], "-v", *rest])
