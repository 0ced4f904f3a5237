#!/usr/bin/env python3
"""Clang's thread-safety analysis over the daemon and client sources.

Parses every C++ source of daemon/ and client/ in BUILD's compile database
with clang++ -fsyntax-only -Wthread-safety -Werror (the GCC build ignores the
annotations), two files at a time. Usage: thread-safety.py BUILD [JOBS]
"""
import concurrent.futures
import json
import os
import shlex
import subprocess
import sys

build = sys.argv[1]
jobs = int(sys.argv[2]) if len(sys.argv) > 2 else 2
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(build, "compile_commands.json")) as f:
    entries = json.load(f)


def command(entry):
    args = shlex.split(entry["command"])
    while args and ("ccache" in args[0] or args[0].endswith(("c++", "g++", "clang++"))):
        args.pop(0)
    keep, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a in ("-o", "-MF", "-MT", "-c"):
            skip = a != "-c"
            continue
        if a.startswith("-MD") or a == entry["file"]:
            continue
        keep.append(a)
    return ["clang++", "-fsyntax-only", "-Wthread-safety", "-Wthread-safety-beta",
            "-Werror=thread-safety", "-Wno-unknown-warning-option", *keep, entry["file"]]


files = [e for e in entries
         if os.path.relpath(e["file"], root).startswith(("daemon/", "client/"))]


def check(entry):
    r = subprocess.run(command(entry), cwd=entry["directory"], capture_output=True, text=True)
    findings = [l for l in r.stderr.splitlines() if "thread-safety" in l or "error:" in l]
    return entry["file"], r.returncode, r.stderr if r.returncode else ""


failed = 0
with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
    for path, rc, err in pool.map(check, files):
        if rc:
            failed += 1
            sys.stderr.write(err)
print(f"thread-safety: {len(files)} files, {failed} with findings")
sys.exit(1 if failed else 0)
