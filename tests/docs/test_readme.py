"""Every code block in README.md is run, compiled or checked against what
it names, so the README cannot drift from the product. A block in a
language this file does not handle fails the test.

- python: the quickstart must be examples/quickstart.py verbatim and is run
  as a new user runs it: in a directory laid out like a checkout after
  `make run` (./ckpt-runs with the real daemon on its default socket), twice
  (a fresh run, then a resume). Other Python blocks are compiled and every
  keyword they pass to ckptd.connect/open_run must be a parameter of it.
- cpp: must be a contiguous piece of examples/cpp/trainer.cc, which is
  built in-tree and against an install, and run, by the SDK test.
- cmake: every line must be in examples/cpp/CMakeLists.txt (same test).
- sh: `build/client/cli/ckptctl ...` lines are run after the quickstart, in
  its directory, and must succeed; `ckptctl CMD ...` lines must name a
  command `ckptctl help CMD` knows and only options its help lists;
  `make TARGET` must be a Makefile target; repository paths must exist;
  the whole block must parse (`bash -n`).
- toml: loaded by `ckptd --config FILE --print-config`, which must accept
  it and show every key with the block's value, taken from the file.
"""

import ast
import inspect
import os
import re
import shlex
import subprocess
import sys
import time

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# The built package (make build: build/python/lib; ctest says where).
PYLIB = os.environ.get("CKPTD_PYTHON_LIB") or os.path.join(ROOT, "build", "python", "lib")
sys.path.insert(0, PYLIB)
CKPTD = os.environ.get("CKPTD_BINARY", os.path.join(ROOT, "build", "daemon", "ckptd"))
CKPTCTL = os.environ.get("CKPTCTL_BINARY", os.path.join(ROOT, "build", "client", "cli", "ckptctl"))
PYTHON = "/usr/bin/python3"


def blocks():
    """(language, text, line number) of every fenced block in README.md."""
    out, lang, start, body = [], None, 0, []
    for n, line in enumerate(open(os.path.join(ROOT, "README.md")).read().split("\n"), 1):
        if lang is None and line.startswith("```"):
            lang, start, body = line[3:].strip(), n, []
        elif lang is not None and line.startswith("```"):
            out.append((lang, "\n".join(body) + "\n", start))
            lang = None
        elif lang is not None:
            body.append(line)
    assert lang is None, f"README.md:{start}: unterminated code block"
    return out


BLOCKS = blocks()
HANDLED = {"python", "cpp", "cmake", "sh", "toml"}
QUICKSTART = open(os.path.join(ROOT, "examples", "quickstart.py")).read()


def of(lang):
    return [(text, n) for ln, text, n in BLOCKS if ln == lang]


def test_every_block_has_a_language_this_test_checks():
    assert len(BLOCKS) >= 8
    unknown = [f"README.md:{n}: ```{ln}" for ln, _, n in BLOCKS if ln not in HANDLED]
    assert unknown == []


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A directory like a checkout after `make run`: the daemon on its dev
    defaults (./ckpt-runs, unix:./ckpt-runs/ckptd.sock), build/client/cli/ckptctl."""
    d = tmp_path_factory.mktemp("checkout")
    os.makedirs(d / "build" / "client" / "cli")
    os.symlink(CKPTCTL, d / "build" / "client" / "cli" / "ckptctl")
    os.symlink(os.path.join(ROOT, "examples"), d / "examples")
    log = open(d / "daemon.log", "wb")
    proc = subprocess.Popen([CKPTD, "--http-listen", ""], cwd=d, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not os.path.exists(d / "ckpt-runs" / "ckptd.sock"):
        assert proc.poll() is None and time.monotonic() < deadline, open(d / "daemon.log").read()
        time.sleep(0.05)
    env = {k: v for k, v in os.environ.items() if k != "CKPTD_SOCKET"}
    env["PYTHONPATH"] = PYLIB
    yield d, env
    proc.terminate()
    proc.wait(30)


def test_the_quickstart_is_the_example_file_and_trains_saves_and_resumes(checkout):
    d, env = checkout
    quick = [text for text, _ in of("python") if text.startswith(QUICKSTART.split("\n")[0])]
    assert quick == [QUICKSTART], "README's quickstart differs from examples/quickstart.py"
    script = d / "quickstart.py"
    script.write_text(quick[0])
    first = subprocess.run([PYTHON, str(script)], cwd=d, env=env, capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0, first.stderr
    assert "fresh run" in first.stdout
    assert "latest checkpoint (step, file): (2999," in first.stdout
    steps = sorted(int(m) for m in re.findall(r"step_(\d+)\.gguf$", "\n".join(
        os.listdir(d / "ckpt-runs" / "quickstart" / "weights")), re.M))
    assert steps == [500, 1000, 1500, 2000, 2500, 2999]  # the last step once, by close()
    again = subprocess.run([PYTHON, str(script)], cwd=d, env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr
    assert "resuming at step 3000" in again.stdout


def sh_lines(text):
    """Commands of a sh block, comments dropped, continuation lines joined."""
    out, cur = [], ""
    for line in text.split("\n"):
        code = re.sub(r"\s+#.*$", "", line) if not line.lstrip().startswith("#") else ""
        cur += code
        if cur.endswith("\\"):
            cur = cur[:-1]
            continue
        if cur.strip():
            out.append(cur.strip())
        cur = ""
    return out


def test_the_ckptctl_lines_after_the_quickstart_succeed(checkout):
    d, env = checkout
    if not os.path.exists(d / "ckpt-runs" / "quickstart" / "weights" / "latest"):
        test_the_quickstart_is_the_example_file_and_trains_saves_and_resumes(checkout)
    ran = 0
    for text, n in of("sh"):
        for cmd in sh_lines(text):
            if cmd.startswith("build/client/cli/ckptctl"):
                r = subprocess.run(shlex.split(cmd), cwd=d, env=env, capture_output=True, text=True,
                                   timeout=60)
                assert r.returncode == 0, f"README.md:{n}: {cmd}\n{r.stdout}{r.stderr}"
                assert r.stdout.strip(), f"README.md:{n}: {cmd} printed nothing"
                ran += 1
    assert ran >= 3


def ckptctl_help(words):
    r = subprocess.run([CKPTCTL, "help", *words], capture_output=True, text=True)
    return r.returncode, r.stdout + r.stderr


def test_ckptctl_lines_name_real_commands_and_options():
    checked = 0
    for text, n in of("sh"):
        for cmd in sh_lines(text):
            argv = shlex.split(cmd)
            if not argv or os.path.basename(argv[0]) != "ckptctl":
                continue
            words = [argv[1]]
            if len(argv) > 2 and re.fullmatch(r"[a-z][a-z-]*", argv[2]):
                rc, _ = ckptctl_help([argv[1], argv[2]])
                if rc == 0:
                    words.append(argv[2])
            rc, help_text = ckptctl_help(words)
            assert rc == 0, f"README.md:{n}: `ckptctl {' '.join(words)}` is not a command:\n{help_text}"
            for opt in (a.split("=")[0] for a in argv if a.startswith("--")):
                assert re.search(rf"{re.escape(opt)}\b", help_text), \
                    f"README.md:{n}: ckptctl {' '.join(words)} has no option {opt}:\n{help_text}"
            checked += 1
    assert checked >= 10


def test_sh_blocks_parse_and_name_real_targets_and_paths():
    targets = set(re.findall(r"^([a-z][a-z-]*):", open(os.path.join(ROOT, "Makefile")).read(), re.M))
    for text, n in of("sh"):
        r = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
        assert r.returncode == 0, f"README.md:{n}: {r.stderr}"
        for cmd in sh_lines(text):
            argv = shlex.split(cmd)
            if argv[0] == "make":
                assert set(argv[1:]) <= targets, f"README.md:{n}: {cmd}: no such make target"
            for a in argv:
                a = a.split("=", 1)[-1]
                if re.match(r"(scripts|examples|config|docker|docs)/", a):
                    assert os.path.exists(os.path.join(ROOT, a)), f"README.md:{n}: {a} does not exist"


def test_cpp_blocks_are_pieces_of_the_example_trainer_the_sdk_test_builds():
    example = open(os.path.join(ROOT, "examples", "cpp", "trainer.cc")).read()
    cpp = of("cpp")
    assert cpp
    for text, n in cpp:
        assert text in example, f"README.md:{n}: not a piece of examples/cpp/trainer.cc"


def test_cmake_blocks_are_lines_of_the_example_project():
    example = open(os.path.join(ROOT, "examples", "cpp", "CMakeLists.txt")).read().split("\n")
    for text, n in of("cmake"):
        for line in text.strip().split("\n"):
            assert line in example, f"README.md:{n}: {line!r} is not in examples/cpp/CMakeLists.txt"


def test_toml_blocks_are_accepted_by_the_daemon_with_their_values(tmp_path):
    for i, (text, n) in enumerate(of("toml")):
        cfg = tmp_path / f"block{i}.toml"
        cfg.write_text(text)
        r = subprocess.run([CKPTD, "--config", str(cfg), "--print-config"], capture_output=True,
                           text=True)
        assert r.returncode == 0, f"README.md:{n}: {r.stderr}"
        for key, value in re.findall(r"^(\w+)\s*=\s*(\S+)", text, re.M):
            assert re.search(rf"^{key} = {re.escape(value)}\s+# {re.escape(str(cfg))}", r.stdout, re.M), \
                f"README.md:{n}: {key} = {value} not taken from the file:\n{r.stdout}"


def test_other_python_blocks_compile_and_pass_only_real_parameters():
    import ckptd

    targets = {"connect": ckptd.connect, "open_run": ckptd.Client.open_run}
    for text, n in of("python"):
        if text == QUICKSTART:
            continue
        tree = ast.parse(text, f"README.md:{n}")
        compile(tree, f"README.md:{n}", "exec")
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in targets:
                params = inspect.signature(targets[node.func.attr]).parameters
                for kw in node.keywords:
                    assert kw.arg in params, f"README.md:{n}: {node.func.attr}() has no {kw.arg}="


def test_the_config_reference_lists_every_key_the_daemon_knows():
    r = subprocess.run([CKPTD, "--print-config"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    doc = open(os.path.join(ROOT, "docs", "config.md")).read()
    section, missing = "", []
    for line in r.stdout.split("\n"):
        if m := re.match(r"^\[([\w.]+)\]", line):
            section = m.group(1)
            assert f"## `[{section}]`" in doc, f"docs/config.md has no [{section}] section"
        elif m := re.match(r"^(\w+) =", line):
            table = doc.split(f"## `[{section}]`", 1)[1].split("\n## ", 1)[0]
            if not re.search(rf"^\| `{m.group(1)}`|, `{m.group(1)}` \|", table, re.M):
                missing.append(f"{section}.{m.group(1)}")
    assert missing == [], f"docs/config.md does not describe {missing}"
