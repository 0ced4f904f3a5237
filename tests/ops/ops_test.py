#!/usr/bin/python3
"""Ops surface: the install tree (DESTDIR), the systemd unit (systemd-analyze
verify), and the Dockerfile's build steps staying the README's."""
import argparse
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

import yaml

ARGS = None


def read(path):
    with open(path) as f:
        return f.read()


def readme_package_build_commands():
    """The README's lines that build the Debian packages without the test
    toolchain (its "Debian packages" section)."""
    text = read(os.path.join(ARGS.source, "README.md"))
    section = text.split("\n### Debian packages", 1)[1].split("\n### ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    block = next(b for b in blocks if "install-deps.sh --build" in b)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]


def dockerfile_build_commands():
    text = read(os.path.join(ARGS.source, "docker", "Dockerfile"))
    build_stage = text.split("FROM debian:12 AS build", 1)[1].split("\nFROM ", 1)[0]
    return [m.strip() for m in re.findall(r"^RUN (.+)$", build_stage, re.M)]


class DockerDriftTest(unittest.TestCase):
    def test_build_stage_runs_exactly_the_readme_package_build_steps(self):
        readme = readme_package_build_commands()
        self.assertIn("scripts/install-deps.sh --build", readme)
        self.assertEqual(dockerfile_build_commands(), readme)
        self.assertTrue(any("make-deb.sh" in c and "/debs" in c for c in readme))

    def test_runtime_stage_installs_the_debs_with_the_line_the_package_test_runs(self):
        text = read(os.path.join(ARGS.source, "docker", "Dockerfile"))
        runtime = text.split("\nFROM debian:12\n", 1)[1]
        self.assertIn("COPY --from=build /debs /tmp/debs", runtime)
        self.assertIn("COPY scripts/install-debs.sh /tmp/install-debs.sh", runtime)
        # The line tests/deb/deb_test.sh extracts and runs in its clean root.
        deb_test = read(os.path.join(ARGS.source, "tests", "deb", "deb_test.sh"))
        pattern = re.search(r"sed -n '(s\|[^']+)'", deb_test).group(1)
        r = subprocess.run(["sed", "-n", pattern], input=text, capture_output=True, text=True)
        self.assertEqual(r.stdout.strip(), "/tmp/install-debs.sh /tmp/debs ckptd python3-ckptd")
        self.assertNotIn("install-deps.sh", runtime)  # no build or test packages at run time
        self.assertRegex(runtime, r"\nUSER ckptd\n")


def dockerignore_patterns():
    lines = read(os.path.join(ARGS.source, ".dockerignore")).splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def build_context(source, patterns):
    """The files `COPY . .` sends: every file under `source` that no
    .dockerignore pattern excludes (Docker's rules: a pattern matches a path
    relative to the context, `**` any number of directories; a directory
    that matches is left out whole). No `!` exceptions are used here."""
    def ignored(rel):
        for p in patterns:
            if fnmatch.fnmatchcase(rel, p) or (p.startswith("**/") and fnmatch.fnmatchcase(
                    os.path.basename(rel), p[3:])):
                return True
        return False

    sent = []
    for d, dirs, files in os.walk(source):
        rel_d = os.path.relpath(d, source)
        dirs[:] = [x for x in dirs if not ignored(os.path.normpath(os.path.join(rel_d, x)))]
        sent += [os.path.normpath(os.path.join(rel_d, f)) for f in files
                 if not ignored(os.path.normpath(os.path.join(rel_d, f)))]
    return sent


class ContainerTest(unittest.TestCase):
    def test_the_build_context_carries_no_host_build_state(self):
        # This checkout has build trees (make test made them): none of them,
        # and no CMakeCache.txt anywhere, may reach the image's configure.
        sent = build_context(ARGS.source, dockerignore_patterns())
        self.assertIn("CMakeLists.txt", sent)
        self.assertIn("scripts/install-deps.sh", sent)
        leaked = [f for f in sent if os.path.basename(f) == "CMakeCache.txt" or
                  f.split(os.sep)[0].startswith("build") or f.startswith("node_modules" + os.sep)
                  or f.startswith("ckpt-runs" + os.sep) or f.startswith(".git" + os.sep)]
        self.assertEqual(leaked[:10], [], f"{len(leaked)} host files would be copied into the image")

    def test_compose_runs_the_example_trainer_the_image_ships(self):
        compose = yaml.safe_load(read(os.path.join(ARGS.source, "docker", "compose.yaml")))
        trainer = compose["services"]["trainer"]
        entry = trainer["entrypoint"]
        self.assertEqual(entry[0], "/usr/libexec/ckptd/ckptd_example_trainer")
        self.assertNotIn("sleep", " ".join(entry))
        socket = entry[entry.index("--socket") + 1]
        # The trainer reaches the daemon's socket (and its .arenas) through the shared volume.
        service_cfg = read(os.path.join(ARGS.source, "config", "ckptd.example.toml"))
        self.assertIn(f'listen = "{socket}"', service_cfg)
        mounts = {v.split(":")[1]: v.split(":")[0] for v in trainer["volumes"]}
        daemon_mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["services"]["ckptd"]["volumes"]}
        sock_dir = os.path.dirname(socket[len("unix:"):])
        self.assertEqual(mounts.get(sock_dir), daemon_mounts.get(sock_dir))
        # The image's ckptd package ships it.
        self.assertIn("usr/libexec/ckptd/ckptd_example_trainer",
                      read(os.path.join(ARGS.source, "debian", "ckptd.install")).split())


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
                     "usr/share/ckptd/proto/ckptd/v1/ckptd.proto",
                     "usr/libexec/ckptd/ckptd_example_trainer", "usr/share/doc/ckptd/docs/config.md",
                     "usr/share/doc/ckptd/docs/metadata.md", "usr/share/doc/ckptd/docs/shared-memory.md",
                     "usr/lib/python3/dist-packages/ckptd/__init__.py",
                     "usr/lib/python3/dist-packages/ckptd/py.typed",
                     "usr/lib/python3/dist-packages/ckptd/v1/ckptd_pb2.py",
                     "usr/lib/python3/dist-packages/ckptd/v1/ckptd_pb2_grpc.py",
                     "usr/lib/python3/dist-packages/ckptd.egg-info/PKG-INFO"]:
            self.assertIn(want, tree)
        # The Python package lands where Debian's python3 looks, and imports from there.
        site = subprocess.run(["/usr/bin/python3", "-c", "import sys; print('\\n'.join(sys.path))"],
                              capture_output=True, text=True, env={}).stdout.splitlines()
        self.assertIn("/usr/lib/python3/dist-packages", site)
        pkgs = os.path.join(self.dest, "usr/lib/python3/dist-packages")
        r = subprocess.run(["/usr/bin/python3", "-c", "import ckptd, ckptd.v1.ckptd_pb2_grpc; print(ckptd.__file__)"],
                           capture_output=True, text=True, env={"PYTHONPATH": pkgs}, cwd=self.dest)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(r.stdout.startswith(pkgs), r.stdout)
        self.assertTrue(os.access(os.path.join(self.dest, "usr/bin/ckptd"), os.X_OK))
        unit = read(os.path.join(self.dest, "usr/lib/systemd/system/ckptd.service"))
        self.assertIn("ExecStart=/usr/bin/ckptd --config /etc/ckptd/ckptd.toml", unit)
        # The installed config is the service setup, and the daemon accepts it.
        r = subprocess.run([os.path.join(self.dest, "usr/bin/ckptd"), "--config",
                            os.path.join(self.dest, "etc/ckptd/ckptd.toml"), "--print-config"],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('listen = "unix:/run/ckptd/ckptd.sock"', r.stdout)

    def test_the_compose_trainer_saves_over_shared_memory(self):
        """The compose file's trainer command, from the installed tree, run
        against an installed daemon on a temp socket: it saves through the
        arena and, run again, resumes."""
        compose = yaml.safe_load(read(os.path.join(ARGS.source, "docker", "compose.yaml")))
        entry = list(compose["services"]["trainer"]["entrypoint"])
        tmp = tempfile.mkdtemp()
        sock = "unix:" + os.path.join(tmp, "ckptd.sock")
        entry[0] = os.path.join(self.dest, entry[0].lstrip("/"))
        entry[entry.index("--socket") + 1] = sock
        daemon = subprocess.Popen([os.path.join(self.dest, "usr/bin/ckptd"), "--root",
                                   os.path.join(tmp, "runs"), "--listen", sock, "--http-listen", ""],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while not os.path.exists(sock[5:]) and time.monotonic() < deadline:
                time.sleep(0.05)
            first = subprocess.run(entry, capture_output=True, text=True, timeout=120)
            self.assertEqual(first.returncode, 0, first.stderr)
            self.assertIn("(shared memory)", first.stdout)
            self.assertIn("saved step 100", first.stdout)
            again = subprocess.run(entry, capture_output=True, text=True, timeout=120)
            self.assertEqual(again.returncode, 0, again.stderr)
            self.assertIn("restored step 2000", again.stdout)
        finally:
            daemon.terminate()
            daemon.wait(30)
            shutil.rmtree(tmp)

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
        problems = [ln for ln in (r.stdout + r.stderr).splitlines()
                    if ln.strip() and "ckptd.service" in ln]
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(problems, [], "\n".join(problems))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", required=True)
    parser.add_argument("--build", required=True)
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0], "-v", *rest])
