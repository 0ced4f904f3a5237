#!/usr/bin/python3
"""The alert rules and the Grafana dashboard (ops/): promtool checks the
rules and runs their unit tests (each alert fires on a synthetic series
and stays quiet on a healthy one); each alert's test is shown to catch a
rule that never fires and one that fires on everything; the dashboard's
queries pass `promtool check rules` as recording rules; every metric they
name is one the daemon exports; and a real daemon exports the overdue
alert's two gauges with the values it means."""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

import yaml

ARGS = None
HISTOGRAM_SUFFIX = re.compile(r"_(bucket|sum|count)$")


def ops(*parts):
    return os.path.join(ARGS.source, "ops", *parts)


def promtool(*args, cwd=None):
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def rules():
    with open(ops("prometheus", "ckptd-alerts.yml")) as f:
        return yaml.safe_load(f)


def dashboard_exprs():
    with open(ops("grafana", "ckptd-dashboard.json")) as f:
        dash = json.load(f)
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    # Grafana's variables, as Grafana fills them in.
    return [e.replace("$__rate_interval", "5m").replace("$instance", ".*") for e in exprs]


def metric_names(expr):
    names = set(re.findall(r"\bckptd_[a-z0-9_]+", expr))
    return {HISTOGRAM_SUFFIX.sub("", n) if n.endswith(("_bucket", "_sum", "_count")) else n for n in names}


def read(path):
    with open(path) as f:
        return f.read()


def daemon_sources():
    text = []
    for root, _, files in os.walk(os.path.join(ARGS.source, "daemon")):
        for name in files:
            if name.endswith((".cc", ".h")):
                with open(os.path.join(root, name)) as f:
                    text.append(f.read())
    return "\n".join(text)


class AlertRulesTest(unittest.TestCase):
    def test_the_rules_pass_promtool_check_and_their_unit_tests(self):
        check = promtool("check", "rules", ops("prometheus", "ckptd-alerts.yml"))
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)
        test = promtool("test", "rules", "ckptd-alerts.test.yml", cwd=ops("prometheus"))
        self.assertEqual(test.returncode, 0, test.stdout + test.stderr)

    def test_every_alert_has_a_case_where_it_fires(self):
        with open(ops("prometheus", "ckptd-alerts.test.yml")) as f:
            tests = yaml.safe_load(f)
        firing = {c["alertname"] for t in tests["tests"] for c in t.get("alert_rule_test", [])
                  if c.get("exp_alerts")}
        alerts = {r["alert"] for g in rules()["groups"] for r in g["rules"] if "alert" in r}
        self.assertEqual(alerts - firing, set(), "alerts no test sees firing")
        self.assertGreaterEqual(len(alerts), 9)

    def test_each_alert_s_test_catches_a_rule_that_never_or_always_fires(self):
        """Mutation: each alert's expression replaced, in turn, by one that
        never fires and by one that fires on every series; the unit tests
        must fail each time."""
        base = rules()
        with tempfile.TemporaryDirectory() as d:
            with open(ops("prometheus", "ckptd-alerts.test.yml")) as f:
                test_text = f.read()
            with open(os.path.join(d, "ckptd-alerts.test.yml"), "w") as f:
                f.write(test_text)
            for gi, group in enumerate(base["groups"]):
                for ri, rule in enumerate(group["rules"]):
                    for mutant in ("vector(1) > 2", '{__name__=~"ckptd_.+|up"} >= 0'):
                        changed = json.loads(json.dumps(base))
                        changed["groups"][gi]["rules"][ri]["expr"] = mutant
                        with open(os.path.join(d, "ckptd-alerts.yml"), "w") as f:
                            yaml.safe_dump(changed, f)
                        out = promtool("test", "rules", "ckptd-alerts.test.yml", cwd=d)
                        self.assertNotEqual(out.returncode, 0,
                                            f"{rule['alert']} with expr {mutant!r} passed its tests")

    def test_the_dashboard_s_queries_pass_promtool_as_recording_rules(self):
        exprs = dashboard_exprs()
        self.assertGreaterEqual(len(exprs), 10)
        doc = {"groups": [{"name": "ckptd-dashboard", "rules": [
            {"record": f"ckptd_dashboard:panel_query_{i}", "expr": e} for i, e in enumerate(exprs)]}]}
        with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
            yaml.safe_dump(doc, f)
            f.flush()
            out = promtool("check", "rules", f.name)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertIn(f"SUCCESS: {len(exprs)} rules found", out.stdout)

    def test_every_metric_named_is_one_the_daemon_exports(self):
        sources = daemon_sources()
        named = set()
        for group in rules()["groups"]:
            for rule in group["rules"]:
                named |= metric_names(rule["expr"])
        for expr in dashboard_exprs():
            named |= metric_names(expr)
        self.assertGreaterEqual(len(named), 12)
        missing = sorted(n for n in named if f'"{n}' not in sources and f" {n} " not in sources)
        self.assertEqual(missing, [], "metrics the daemon does not export")


class OverdueGaugesTest(unittest.TestCase):
    """The overdue alert compares two gauges: a real daemon with a run whose
    trainer asks ShouldSave every ~50 ms under every_steps = 10."""

    def test_an_open_run_exports_its_clock_and_expected_interval(self):
        sys.path.insert(0, os.environ["CKPTD_PYTHON_LIB"])
        import ckptd

        with tempfile.TemporaryDirectory() as d:
            log = os.path.join(d, "daemon.log")
            sock = os.path.join(d, "ckptd.sock")
            with open(log, "wb") as out:
                proc = subprocess.Popen([ARGS.daemon, "--root", os.path.join(d, "runs"), "--listen",
                                         "unix:" + sock, "--http-listen", "127.0.0.1:0"],
                                        stdout=out, stderr=subprocess.STDOUT)
            try:
                port = None
                deadline = time.monotonic() + 30
                while port is None:
                    self.assertLess(time.monotonic(), deadline, read(log))
                    m = re.search(r"http: listening on \S+:(\d+)", read(log))
                    port = int(m.group(1)) if m else None
                    time.sleep(0.02)
                opened = time.time()
                client = ckptd.connect("unix:" + sock)
                run = client.open_run("r", schedule={"every_steps": 10})
                for step in range(1, 8):
                    run.should_save(step)
                    time.sleep(0.05)
                client.close()
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            finally:
                proc.terminate()
                proc.wait(30)
        clock = float(re.search(r'^ckptd_last_commit_or_open_timestamp_seconds\{run="r"\} (\S+)$',
                                text, re.M).group(1))
        every = float(re.search(r'^ckptd_expected_commit_interval_seconds\{run="r"\} (\S+)$',
                                text, re.M).group(1))
        self.assertLessEqual(opened - 5, clock)  # no commit yet: when the run was opened
        self.assertLessEqual(clock, time.time())
        self.assertGreater(every, 10 * 0.04)  # 10 steps of ~50 ms (a loaded machine: more)
        self.assertLess(every, 10 * 1.0)
        with tempfile.NamedTemporaryFile("w", suffix=".prom") as f:
            f.write(text)
            f.flush()
            out = subprocess.run(f"promtool check metrics < {f.name}", shell=True,
                                 capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", required=True)
    ap.add_argument("--daemon", required=True)
    ARGS, rest = ap.parse_known_args()
    unittest.main(argv=[sys.argv[0], *rest], verbosity=2)
