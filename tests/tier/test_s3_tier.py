"""The object-storage tier against a real Ceph RGW (scripts/dev-s3.sh starts a
one-node cluster for this module): committed checkpoints land in the bucket
with their manifest and `latest` written last, an independent client
(boto3) reads back exactly what was committed, an upload survives the
daemon's SIGKILL and the store's, and a refusing store makes the tier
unhealthy without stopping local saves."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))

from conftest import BINARY, Daemon, wait_for  # noqa: E402

CKPTCTL = os.environ.get("CKPTCTL_BINARY", os.path.join(ROOT, "build", "client", "cli", "ckptctl"))
DEV_S3 = os.path.join(ROOT, "scripts", "dev-s3.sh")
MiB = 1 << 20

boto3 = pytest.importorskip("boto3")
if not shutil.which("radosgw"):
    pytest.skip("Ceph RGW is not installed (scripts/install-deps.sh installs it)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def store():
    """One Ceph cluster + RGW for the module; every test gets its own bucket."""
    d = tempfile.mkdtemp(prefix="ckptd-s3-")
    try:
        out = subprocess.run([DEV_S3, "start", d], capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stdout + out.stderr
        env = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
        env["dir"] = d
        yield env
    finally:
        subprocess.run([DEV_S3, "stop", d], timeout=60)
        shutil.rmtree(d, ignore_errors=True)


def s3_client(store, secret=None):
    return boto3.client("s3", endpoint_url=store["CKPTD_S3_ENDPOINT"],
                        aws_access_key_id=store["CKPTD_S3_ACCESS_KEY"],
                        aws_secret_access_key=secret or store["CKPTD_S3_SECRET_KEY"],
                        region_name="us-east-1")


@pytest.fixture
def bucket(store):
    name = "t-" + uuid.uuid4().hex[:12]
    s3_client(store).create_bucket(Bucket=name)
    return name


_started = []


@pytest.fixture(autouse=True)
def _stop_started_daemons():
    """Every daemon a test started is stopped when it ends, failed or not."""
    yield
    while _started:
        _started.pop().stop()


def tier_daemon(tmp_path, store, bucket, extra_toml="", secret=None, http=False, pause=0):
    cfg = tmp_path / "tier.toml"
    cfg.write_text(f'[tier.s3]\nendpoint = "{store["CKPTD_S3_ENDPOINT"]}"\nbucket = "{bucket}"\n'
                   f'prefix = "ckpt"\npart_size = {5 * MiB}\n{extra_toml}')
    args = ["--config", str(cfg)] + (["--http-listen", "127.0.0.1:0"] if http else [])
    d = Daemon(tmp_path, args)
    d.secret = secret or store["CKPTD_S3_SECRET_KEY"]
    d.s3_env = {"CKPTD_S3_ACCESS_KEY": store["CKPTD_S3_ACCESS_KEY"], "CKPTD_S3_SECRET_KEY": d.secret}
    if pause:  # a pause after each object of a step: every intermediate state is seen
        d.s3_env["CKPTD_TEST_TIER_PAUSE_S"] = str(pause)
    _started.append(d)
    return d.start(env=d.s3_env)


def http_port(d):
    m = wait_for(lambda: re.search(r"http: listening on 127\.0\.0\.1:(\d+)", open(d.log).read()), 30,
                 "the HTTP listener")
    return int(m.group(1))


def metric_at_least(d, series, value, timeout=30):
    """Waits until the /metrics line that starts with `series` reads at least
    `value`, and returns what it read. The daemon counts an upload or a repair
    after it has recorded it (state file, store), so a test that has just seen
    the record waits for the count too."""
    port = http_port(d)
    seen = []

    def reached():
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        seen[:] = [line for line in text.splitlines() if line.startswith(series + " ")]
        return bool(seen) and float(seen[0].split()[-1]) >= value and float(seen[0].split()[-1])
    try:
        return wait_for(reached, timeout, f"{series} >= {value}")
    except AssertionError as e:
        raise AssertionError(f"{e}; last read: {seen}") from None


def uploaded(d, run_id, steps):
    """Waits until the daemon's state file says every step is uploaded."""
    path = os.path.join(d.root, run_id, "ckptd-uploads.json")

    def done():
        try:
            state = json.load(open(path))
        except (OSError, ValueError):
            return False
        done = set(state.get("uploaded", []))
        if state.get("waiting") or not done or max(done) < max(steps):
            return False
        # The file forgets uploaded steps once they are gone from the node.
        return all(s in done or not os.path.exists(
            os.path.join(d.root, run_id, "weights", f"step_{s}.gguf")) for s in steps)
    wait_for(done, 120, f"steps {steps} of {run_id} uploaded")


def parts_recorded(d, run_id, step):
    """How many parts of step_N.gguf's multipart upload the state file records."""
    try:
        state = json.load(open(os.path.join(d.root, run_id, "ckptd-uploads.json")))
        files = state["waiting"][str(step)]["files"]
        return sum(1 for p in files[f"step_{step}.gguf"]["parts"] if p)
    except (OSError, ValueError, KeyError):
        return 0


def multipart_etag(data, part):
    """The ETag S3 gives a multipart object, computed from its bytes."""
    if len(data) <= part:
        return hashlib.md5(data).hexdigest()
    digests = b"".join(hashlib.md5(data[i:i + part]).digest() for i in range(0, len(data), part))
    return f"{hashlib.md5(digests).hexdigest()}-{(len(data) + part - 1) // part}"


def check_consistent(s3, bucket, prefix):
    """Every manifest names only complete objects; latest names a manifest.
    Each object is read before the listing that must show what it names (it
    was written after them), so a check never races a live upload."""
    try:
        latest = json.loads(s3.get_object(Bucket=bucket, Key=prefix + "latest")["Body"].read())
    except s3.exceptions.NoSuchKey:
        latest = None
    objects = {o["Key"]: o for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])}
    for key in objects:
        if key.endswith(".manifest.json"):
            m = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            for f in m["files"]:
                assert f["key"] in objects, f"{key} names {f['key']}, which is not in the store"
                assert objects[f["key"]]["Size"] == f["size"]
    if latest is not None:
        assert latest["manifest"] in objects, f"latest names {latest['manifest']}, not in the store"
    return objects


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_the_object_store_contract_holds_on_ceph_rgw_as_on_memory(store, scheme):
    """The ObjectStore contract suite (tests/tier/object_store_test.cc) that
    the upload, coordination and fetch unit tests rely on MemoryStore for,
    run against this RGW, over http (payloads signed) and over https
    (UNSIGNED-PAYLOAD, the CA dev-s3.sh made): SigV4, ETags, multipart and
    part-copy semantics, paging order, Content-MD5. None of its cases may be
    skipped here."""
    binary = os.environ.get("STORE_CONTRACT_BINARY",
                            os.path.join(ROOT, "build", "tests", "tier", "store_contract_tests"))
    endpoint = store["CKPTD_S3_HTTPS_ENDPOINT" if scheme == "https" else "CKPTD_S3_ENDPOINT"]
    env = {**os.environ, "CKPTD_TEST_S3_ENDPOINT": endpoint,
           "CKPTD_TEST_S3_BUCKET": "contract-" + uuid.uuid4().hex[:8],
           "CKPTD_S3_ACCESS_KEY": store["CKPTD_S3_ACCESS_KEY"],
           "CKPTD_S3_SECRET_KEY": store["CKPTD_S3_SECRET_KEY"]}
    if scheme == "https":
        env["CKPTD_TEST_S3_CA_FILE"] = store["CKPTD_S3_CA_FILE"]
    out = subprocess.run([binary, "--gtest_filter=Stores/ObjectStoreContract.*/S3",
                          "--gtest_brief=1"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    m = re.search(r"\[  PASSED  \] (\d+) test", out.stdout)
    assert m and int(m.group(1)) == 6 and "SKIPPED" not in out.stdout, out.stdout[-4000:]


def test_payloads_go_unsigned_over_https_only_and_a_bad_ca_file_is_named(tmp_path, store):
    """Over https, where TLS protects the body, requests carry
    x-amz-content-sha256: UNSIGNED-PAYLOAD (as AWS's SDKs send); over http,
    or with sign_payload = "always", the body's SHA-256. Seen by a server
    that records each request's headers (with dev-s3.sh's certificate for
    https), reached by ckptctl fetch with each config."""
    import http.server
    import ssl

    seen = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(dict(self.headers))
            body = b"<Error><Code>NoSuchKey</Code><Message>none</Message></Error>"
            self.send_response(404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    tls_dir = os.path.join(store["dir"], "tls")
    empty_sha = hashlib.sha256(b"").hexdigest()
    cases = [("https", "auto", "UNSIGNED-PAYLOAD"), ("https", "always", empty_sha), ("http", "auto", empty_sha)]
    for scheme, sign, want in cases:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
        if scheme == "https":
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(os.path.join(tls_dir, "rgw.pem"), os.path.join(tls_dir, "rgw.key"))
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            ca = f'ca_file = "{store["CKPTD_S3_CA_FILE"]}"\n' if scheme == "https" else ""
            cfg = tmp_path / f"{scheme}-{sign}.toml"
            cfg.write_text(f'[tier.s3]\nendpoint = "{scheme}://127.0.0.1:{server.server_address[1]}"\n'
                           f'bucket = "b"\n{ca}sign_payload = "{sign}"\n'
                           f'[storage]\nroots = ["{tmp_path}/runs"]\n')
            before = len(seen)
            r = subprocess.run([CKPTCTL, "fetch", "r", "--config", str(cfg)], capture_output=True, text=True,
                               timeout=60, env={**os.environ, "CKPTD_S3_ACCESS_KEY": "AK",
                                                "CKPTD_S3_SECRET_KEY": "SK"})
            assert r.returncode != 0 and len(seen) > before, (scheme, sign, r.stderr)
            assert seen[-1].get("x-amz-content-sha256") == want, (scheme, sign, seen[-1])
        finally:
            server.shutdown()
            server.server_close()
    # A CA file that is not one: refused by name before any request.
    bad = tmp_path / "bad-ca.toml"
    bad.write_text('[tier.s3]\nendpoint = "https://127.0.0.1:9"\nbucket = "b"\n'
                   f'ca_file = "{tmp_path}/missing.pem"\n[storage]\nroots = ["{tmp_path}/runs"]\n')
    r = subprocess.run([CKPTCTL, "fetch", "r", "--config", str(bad)], capture_output=True, text=True,
                       timeout=60, env={**os.environ, "CKPTD_S3_ACCESS_KEY": "AK", "CKPTD_S3_SECRET_KEY": "SK"})
    assert r.returncode != 0 and "tier.s3.ca_file" in r.stderr and "missing.pem" in r.stderr, r.stderr


def test_committed_steps_land_with_manifest_and_latest_last_and_read_back_exactly(tmp_path, store, bucket):
    import numpy as np

    import ckptd

    d = tier_daemon(tmp_path, store, bucket, pause=0.3)
    s3 = s3_client(store)
    prefix = "ckpt/sizes/"
    seen_bad = []
    stop = threading.Event()

    def watch():  # a reader that trusts manifests, polling while uploads run
        while not stop.is_set():
            try:
                check_consistent(s3, bucket, prefix)
            except AssertionError as e:
                seen_bad.append(str(e))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        run = ckptd.connect(d.target).open_run("sizes", transport="stream")
        rng = np.random.default_rng(7)
        sizes = {10: 1000, 20: (5 * MiB) // 4 - 100, 30: int(3.5 * 5 * MiB) // 4}  # float32 counts
        for step, n in sizes.items():
            r = run.save(step, {"w": rng.standard_normal(n, dtype=np.float32)},
                         optimizer=None, extra={"next": step + 1})
            assert r.state == "committed"
        uploaded(d, "sizes", list(sizes))
    finally:
        stop.set()
        watcher.join()
        d.stop()
    assert seen_bad == [], seen_bad[:3]
    objects = check_consistent(s3, bucket, prefix)
    latest = json.loads(s3.get_object(Bucket=bucket, Key=prefix + "latest")["Body"].read())
    assert latest["step"] == 30
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    for step in sizes:
        m = json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}step_{step}.manifest.json")["Body"].read())
        names = {f["name"] for f in m["files"]}
        assert names == {f"step_{step}.gguf", f"step_{step}.train.gguf"}
        for f in m["files"]:
            local = open(os.path.join(d.root, "sizes", "weights", f["name"]), "rb").read()
            body = s3.get_object(Bucket=bucket, Key=f["key"])["Body"].read()
            assert body == local, f["key"]
            assert objects[f["key"]]["ETag"].strip('"') == multipart_etag(body, m["part_size"]) == f["etag"]
            if f["role"] == "model":
                out = tmp_path / f["name"]
                out.write_bytes(body)
                v = subprocess.run([CKPTCTL, "verify", str(out)], capture_output=True, text=True)
                assert v.returncode == 0, v.stdout + v.stderr
                assert f["content_digest"] in v.stdout and m["uuid"] in v.stdout
    assert objects[f"{prefix}step_30.gguf"]["ETag"].endswith('-4"')  # a real 4-part upload


def test_an_upload_resumes_after_the_daemon_is_killed_and_leaves_no_stale_upload(tmp_path, store, bucket):
    import numpy as np

    import ckptd

    # One part at a time, so the kill lands between parts.
    d = tier_daemon(tmp_path, store, bucket, "parallel_parts = 1\n")
    run = ckptd.connect(d.target, reconnect_timeout=0).open_run("resume", transport="stream")
    data = np.random.default_rng(3).standard_normal(40 * MiB // 4, dtype=np.float32)
    assert run.save(100, {"w": data}).state == "committed"
    parts_done = lambda: parts_recorded(d, "resume", 100)  # noqa: E731
    wait_for(lambda: parts_done() >= 2, 60, "two parts uploaded")
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()
    done_before = parts_done()
    assert done_before < 9, "the upload finished before the kill; make the file larger"
    # A stale upload of this run the state does not know (as if the daemon
    # had died between creating it and recording it): aborted at restart.
    s3 = s3_client(store)
    stale = s3.create_multipart_upload(Bucket=bucket, Key="ckpt/resume/step_99.gguf")["UploadId"]
    d.start(env=d.s3_env)
    uploaded(d, "resume", [100])
    log = open(d.log).read()
    resumed = rf"resuming run=resume step=100 file=step_100.gguf .*\({done_before} of 9 parts done\)"
    assert re.search(resumed, log), log[-3000:]
    assert "aborting a stale multipart upload run=resume key=ckpt/resume/step_99.gguf" in log
    uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert uploads == [], [u["UploadId"] for u in uploads] + [stale]
    body = s3.get_object(Bucket=bucket, Key="ckpt/resume/step_100.gguf")["Body"].read()
    assert body == open(os.path.join(d.root, "resume", "weights", "step_100.gguf"), "rb").read()
    check_consistent(s3, bucket, "ckpt/resume/")
    d.stop()


@pytest.mark.parametrize("victim", ["osd", "rgw"])
def test_a_store_killed_mid_upload_makes_the_tier_unhealthy_local_saves_go_on_and_it_completes(
        tmp_path, store, bucket, victim):
    """SIGKILL the OSD (RGW then holds requests open: the stall timeout
    turns that into a retry) or RGW itself while a multipart upload is
    between parts; restart it: the upload completes, exact."""
    import numpy as np

    import ckptd

    # One part at a time, so the kill lands between parts of step 100.
    d = tier_daemon(tmp_path, store, bucket, "parallel_parts = 1\nstall_timeout_seconds = 3\n",
                    http=True)
    port = http_port(d)
    run = ckptd.connect(d.target).open_run("outage", transport="stream")

    def ready():
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).status == 200, ""
        except urllib.error.HTTPError as e:
            return False, e.read().decode()

    def metrics():
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()

    parts_done = lambda: parts_recorded(d, "outage", 100)  # noqa: E731
    data = np.random.default_rng(5).standard_normal(40 * MiB // 4, dtype=np.float32)
    assert run.save(100, {"w": data}).state == "committed"
    wait_for(lambda: parts_done() >= 2, 60, "two parts uploaded")
    subprocess.run([DEV_S3, "kill", store["dir"], victim], check=True, timeout=60)
    try:
        assert parts_done() < 9, "the upload finished before the kill; make the file larger"
        t0 = time.monotonic()
        assert run.save(101, {"w": np.full(1000, 2, np.float32)}).state == "committed"
        assert time.monotonic() - t0 < 10  # the local save does not wait for the store
        why = wait_for(lambda: (lambda r: not r[0] and r[1])(ready()), 60, "readyz to report the tier")
        assert "object-storage tier is unhealthy" in why, why
        wait_for(lambda: "ckptd_tier_healthy 0" in metrics(), 10, "ckptd_tier_healthy 0")
        t0 = time.monotonic()
        assert run.save(102, {"w": np.full(1000, 3, np.float32)}).state == "committed"
        assert time.monotonic() - t0 < 10  # nor while the tier is known to be down
    finally:
        subprocess.run([DEV_S3, "revive", store["dir"]], check=True, timeout=240)
    uploaded(d, "outage", [100, 101, 102])
    wait_for(lambda: ready()[0], 30, "readyz back to 200")
    wait_for(lambda: "ckptd_tier_healthy 1" in metrics(), 10, "ckptd_tier_healthy 1")
    s3 = s3_client(store)
    latest = json.loads(s3.get_object(Bucket=bucket, Key="ckpt/outage/latest")["Body"].read())
    assert latest["step"] == 102
    body = s3.get_object(Bucket=bucket, Key="ckpt/outage/step_100.gguf")["Body"].read()
    assert body == open(os.path.join(d.root, "outage", "weights", "step_100.gguf"), "rb").read()
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    check_consistent(s3, bucket, "ckpt/outage/")
    infos = {c["step"]: c for c in json.loads(subprocess.run(
        [CKPTCTL, "--socket", d.target, "ls", "outage", "--json"], capture_output=True, text=True,
        check=True).stdout)["checkpoints"]}
    assert infos["100"]["upload_state"] == "uploaded"
    d.stop()


def test_a_refusing_store_reports_upload_failed_and_keeps_saving(tmp_path, store, bucket):
    import numpy as np

    import ckptd
    from ckptd.v1 import ckptd_pb2 as pb

    d = tier_daemon(tmp_path, store, bucket, secret="not-the-secret-" + "0" * 24)
    client = ckptd.connect(d.target)
    run = client.open_run("refused", transport="stream")
    events = []

    def watch():
        for e in client.stub.WatchRun(pb.WatchRunRequest(run_id="refused"), timeout=60):
            events.append(e)
            if e.type == pb.RunEvent.TYPE_UPLOAD_FAILED:
                return
    t = threading.Thread(target=watch)
    t.start()
    time.sleep(0.5)
    assert run.save(1, {"w": np.ones(1000, np.float32)}).state == "committed"
    t.join(60)
    failed = [e for e in events if e.type == pb.RunEvent.TYPE_UPLOAD_FAILED]
    assert failed and "403" in failed[0].error and "SignatureDoesNotMatch" in failed[0].error, events
    assert run.save(2, {"w": np.ones(1000, np.float32)}).state == "committed"  # saves go on
    log = open(d.log).read()
    assert d.secret not in log and store["CKPTD_S3_SECRET_KEY"] not in log
    printed = subprocess.run([BINARY, "--config", str(tmp_path / "tier.toml"), "--print-config"],
                             capture_output=True, text=True, env={**os.environ, **d.s3_env})
    assert d.secret not in printed.stdout and "endpoint" in printed.stdout
    d.stop()


def test_ckptctl_fetch_goes_through_a_running_daemon_with_its_tier_settings(tmp_path, store, bucket):
    """With a daemon at --socket and no --config, ckptctl asks the daemon to
    fetch (its endpoint and credentials; ckptctl here has neither), and the
    step is listed at once, with no restart."""
    import numpy as np

    import ckptd
    from ckptd.v1 import ckptd_pb2 as pb

    d = tier_daemon(tmp_path, store, bucket)
    model = {"w": np.random.default_rng(8).standard_normal((1000, 300), dtype=np.float32)}
    run = ckptd.connect(d.target).open_run("via", transport="stream")
    for step in (100, 200):
        assert run.save(step, {"w": model["w"] + step}).state == "committed"
    uploaded(d, "via", [100, 200])
    d.stop()
    weights = os.path.join(d.root, "via", "weights")
    for name in ("step_100.gguf", "step_100.train.gguf"):
        if os.path.exists(os.path.join(weights, name)):
            os.remove(os.path.join(weights, name))
    d.start(env=d.s3_env)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CKPTD_")}
    r = subprocess.run([CKPTCTL, "fetch", "via", "100", "--socket", d.target, "--json"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["step"] == 100 and got["from"] == "store" and got["through"] == d.target, got
    assert got["files"][-1] == os.path.join(weights, "step_100.gguf")
    listed = ckptd.connect(d.target).stub.ListCheckpoints(pb.ListCheckpointsRequest(run_id="via"))
    assert sorted(c.step for c in listed.checkpoints) == [100, 200]
    loaded = ckptd.load(os.path.join(weights, "step_100.gguf"))
    assert np.array_equal(loaded["w"], model["w"] + 100)
    # Without a daemon there, and without a config, it says what it needs.
    d.stop()
    r = subprocess.run([CKPTCTL, "fetch", "via", "100", "--socket", d.target],
                       capture_output=True, text=True, env={**env, "CKPTD_CONFIG": str(tmp_path / "none.toml")},
                       timeout=120)
    assert r.returncode != 0 and "none.toml" in r.stderr, r.stderr


def test_ckptctl_fetch_restores_a_wiped_run_that_verifies_and_loads(tmp_path, store, bucket):
    import numpy as np

    import ckptd

    d = tier_daemon(tmp_path, store, bucket)
    model = {"w": np.random.default_rng(5).standard_normal((3000, 1000), dtype=np.float32),
             "b": np.arange(7, dtype=np.float32)}
    run = ckptd.connect(d.target).open_run("wiped", transport="stream")
    assert run.save(100, model, extra={"next_step": 101}).state == "committed"
    assert run.save(200, {k: v + 1 for k, v in model.items()}, extra={"next_step": 201}).state == "committed"
    uploaded(d, "wiped", [100, 200])
    d.stop()
    shutil.rmtree(os.path.join(d.root, "wiped"))
    env = {**os.environ, **d.s3_env}
    cfg = str(tmp_path / "tier.toml")
    with open(cfg, "a") as f:  # ckptctl reads the daemon's config: roots too
        f.write(f'[storage]\nroots = ["{d.root}"]\n')

    def fetch(*args):
        return subprocess.run([CKPTCTL, "fetch", "wiped", *args, "--config", cfg, "--json"],
                              capture_output=True, text=True, env=env, timeout=120)

    r = fetch()  # the step latest names, into <root>/wiped/weights
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["step"] == 200 and got["files"][-1].endswith("/wiped/weights/step_200.gguf")
    weights = os.path.join(d.root, "wiped", "weights")
    assert sorted(os.listdir(weights)) == ["step_200.gguf", "step_200.train.gguf"]
    v = subprocess.run([CKPTCTL, "verify", os.path.join(weights, "step_200.gguf")], capture_output=True,
                       text=True)
    assert v.returncode == 0, v.stdout + v.stderr
    older = tmp_path / "older"
    r = fetch("100", "-o", str(older))
    assert r.returncode == 0, r.stderr
    loaded = ckptd.load(str(older / "step_100.gguf"))
    assert np.array_equal(loaded["w"], model["w"]) and np.array_equal(loaded["b"], model["b"])
    # The daemon finds the fetched step at its next start; a trainer restores it.
    d.start(env=d.s3_env)
    run = ckptd.connect(d.target).open_run("wiped", transport="stream")
    into = {k: np.zeros_like(v) for k, v in model.items()}
    info = run.restore(model=into)
    assert info.step == 200 and info.extra["next_step"] == 201
    assert np.array_equal(into["w"], model["w"] + 1)
    d.stop()
    # Refusals: a step never uploaded, an existing file, a tampered object.
    r = fetch("300", "-o", str(tmp_path / "none"))
    assert r.returncode == 1 and "no manifest ckpt/wiped/step_300.manifest.json" in r.stderr, r.stderr
    r = fetch("100", "-o", str(older))
    assert r.returncode == 1 and "exists: fetch into another directory" in r.stderr, r.stderr
    s3 = s3_client(store)
    key = "ckpt/wiped/step_100.gguf"
    body = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[-1] ^= 1  # the last padding byte: caught as it arrives, before the ETag is known
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    tampered = tmp_path / "tampered"
    r = fetch("100", "-o", str(tampered))
    assert r.returncode == 1 and f"{key}: byte at offset {len(body) - 1} lies between tensors" in r.stderr, \
        r.stderr
    assert [f for f in os.listdir(tampered) if "step_100" in f] == []  # nothing left behind


def test_remote_retention_deletes_exactly_what_its_plan_says_never_latest_or_pinned(tmp_path, store, bucket):
    import numpy as np

    import ckptd

    d = tier_daemon(tmp_path, store, bucket, 'retention = "same"\n')
    client = ckptd.connect(d.target)
    run = client.open_run("kept", transport="stream")  # no retention rule yet: all kept
    steps = [10, 20, 30, 40, 50, 60]
    for step in steps:
        assert run.save(step, {"w": np.full(1000, step, np.float32)},
                        metrics={"loss": 1.0 / step}).state == "committed"
    uploaded(d, "kept", steps)
    s3 = s3_client(store)

    def remote_steps():
        objs = check_consistent(s3, bucket, "ckpt/kept/")
        return sorted(int(m.group(1)) for k in objs if (m := re.search(r"step_(\d+)\.manifest\.json$", k)))
    assert remote_steps() == steps

    def ctl(*args):
        r = subprocess.run([CKPTCTL, "--socket", d.target, *args], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout
    ctl("pin", "kept", "10", "--reason", "paper")
    client.open_run("kept", transport="stream", retention={"keep_last": 2})
    plan = json.loads(ctl("retention", "plan", "kept", "--remote", "--json"))
    verdict = {int(x["step"]): x.get("keep", False) for x in plan["decisions"]}
    assert verdict == {10: True, 20: False, 30: False, 40: False, 50: True, 60: True}, plan
    assert "remote copies" in plan["policy"]
    assert remote_steps() == steps  # planning deletes nothing
    applied = json.loads(ctl("retention", "apply", "kept", "--remote", "--json"))
    assert sorted(int(s) for s in applied["deleted"]) == [20, 30, 40]
    assert remote_steps() == [10, 50, 60]
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="ckpt/kept/")["Contents"]}
    assert not any(re.search(r"step_(20|30|40)\.", k) for k in keys), keys  # no orphaned file
    assert json.loads(s3.get_object(Bucket=bucket, Key="ckpt/kept/latest")["Body"].read())["step"] == 60
    d.stop()


def test_remote_copies_are_kept_by_default_and_the_plan_says_so(tmp_path, store, bucket):
    import numpy as np

    import ckptd

    d = tier_daemon(tmp_path, store, bucket)
    run = ckptd.connect(d.target).open_run("all", transport="stream", retention={"keep_last": 1})
    for step in (1, 2, 3):
        assert run.save(step, {"w": np.full(10, step, np.float32)}).state == "committed"
    # Local retention (keep_last=1) holds every step until it is uploaded:
    # all three reach the store.
    uploaded(d, "all", [1, 2, 3])
    d.stop()
    d.start(env=d.s3_env)
    out = subprocess.run([CKPTCTL, "--socket", d.target, "retention", "apply", "all", "--remote", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert "keep_all" in plan["policy"] and not plan.get("deleted")
    assert all(x["keep"] for x in plan["decisions"])
    off = Daemon(tmp_path / "off").start() if (tmp_path / "off").mkdir() is None else None
    r = subprocess.run([CKPTCTL, "--socket", off.target, "retention", "plan", "x", "--remote"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "object-storage tier is off" in r.stderr, r.stderr
    off.stop()
    d.stop()


def test_a_trainer_on_a_new_node_restores_from_the_store_python_and_cpp(tmp_path, store, bucket):
    """Node A saves and uploads; node B (an empty root, the same bucket)
    restores: the Python client and the C++ example trainer ask the daemon to
    fetch the step back, and it is not uploaded again."""
    import numpy as np

    import ckptd

    a = tier_daemon(tmp_path / "a", store, bucket) if (tmp_path / "a").mkdir() is None else None
    model = {"w": np.random.default_rng(9).standard_normal((500, 300), dtype=np.float32)}
    run = ckptd.connect(a.target).open_run("moved", transport="stream")
    assert run.save(10, model, extra={"next_step": 11}).state == "committed"
    assert run.save(20, {"w": model["w"] * 2}, extra={"next_step": 21}).state == "committed"
    uploaded(a, "moved", [10, 20])
    trainer = os.path.join(os.path.dirname(BINARY), "..", "examples", "ckptd_example_trainer")
    r = subprocess.run([trainer, "--socket", a.target, "--run", "cpp", "--steps", "120", "--every", "50"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    uploaded(a, "cpp", [50, 100, 120])
    a.stop()

    b = tier_daemon(tmp_path / "b", store, bucket) if (tmp_path / "b").mkdir() is None else None
    run = ckptd.connect(b.target).open_run("moved", transport="stream")
    into = {"w": np.zeros_like(model["w"])}
    info = run.restore(model=into)
    assert info is not None and info.step == 20 and info.extra["next_step"] == 21
    assert np.array_equal(into["w"], model["w"] * 2)
    older = run.restore(model=into, step=10)
    assert older.step == 10 and np.array_equal(into["w"], model["w"])
    r = subprocess.run([trainer, "--socket", b.target, "--run", "cpp", "--steps", "10", "--every", "50"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "restored step 120" in r.stdout, r.stdout
    time.sleep(1)
    log = open(b.log).read()
    assert "tier: fetched run=moved step=20" in log and "tier: fetched run=cpp step=120" in log
    assert not re.search(r"tier: uploaded run=moved step=(10|20) ", log), "a fetched step was sent again"
    # Nothing in the store: restore says so (None), as for a fresh run.
    fresh = ckptd.connect(b.target).open_run("never-saved", transport="stream")
    assert fresh.restore(model={"w": np.zeros(3, np.float32)}) is None
    b.stop()


def test_runs_override_the_tier_in_open_run_and_keep_it_across_restarts(tmp_path, store, bucket):
    """OpenRun's tier options: a local_only run is never uploaded; another
    run's objects go under its own prefix with its own remote retention,
    also after the daemon restarts; bad options are refused up front."""
    import numpy as np

    import ckptd

    d = tier_daemon(tmp_path, store, bucket)  # daemon: prefix "ckpt", keep_all
    client = ckptd.connect(d.target)
    scratch = client.open_run("scratch", transport="stream", tier={"local_only": True})
    team = client.open_run("team", transport="stream", retention={"keep_last": 2},
                           tier={"prefix": "team-b/ckpt", "remote_retention": "same"})
    plain = client.open_run("plain", transport="stream", retention={"keep_last": 2})
    for step in (1, 2, 3):
        for r in (scratch, team, plain):
            assert r.save(step, {"w": np.full(1000, step, np.float32)}).state == "committed"
    uploaded(d, "team", [1, 2, 3])
    uploaded(d, "plain", [1, 2, 3])
    s3 = s3_client(store)

    def remote_steps(prefix):
        objs = check_consistent(s3, bucket, prefix)
        return sorted(int(m.group(1)) for k in objs if (m := re.search(r"step_(\d+)\.manifest\.json$", k)))
    # The run's own prefix and retention (applied just after each upload).
    wait_for(lambda: remote_steps("team-b/ckpt/team/") == [2, 3], 30, "team's remote retention")
    assert remote_steps("ckpt/team/") == []
    assert remote_steps("ckpt/plain/") == [1, 2, 3]  # the daemon's keep_all
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert not [k for k in keys if "/scratch/" in k], keys  # local_only: nothing uploaded
    assert not os.path.exists(os.path.join(d.root, "scratch", "ckptd-uploads.json"))
    infos = {c["step"]: c for c in json.loads(subprocess.run(
        [CKPTCTL, "--socket", d.target, "ls", "scratch", "--json"], capture_output=True, text=True,
        check=True).stdout)["checkpoints"]}
    assert not infos["3"].get("upload_state") and infos["3"]["location"] == "local", infos["3"]
    plan = json.loads(subprocess.run(
        [CKPTCTL, "--socket", d.target, "retention", "plan", "team", "--remote", "--json"],
        capture_output=True, text=True, check=True).stdout)
    assert "keep_last" in plan["policy"], plan

    # The options are the run's settings: a restarted daemon keeps them
    # (no OpenRun needed before the first save).
    d.stop()
    d.start(env=d.s3_env)
    team = ckptd.connect(d.target).open_run("team", transport="stream", retention={"keep_last": 2},
                                            tier={"prefix": "team-b/ckpt", "remote_retention": "same"})
    assert team.save(4, {"w": np.full(1000, 4, np.float32)}).state == "committed"
    uploaded(d, "team", [4])
    wait_for(lambda: remote_steps("team-b/ckpt/team/") == [3, 4], 30, "team's remote retention")
    latest = json.loads(s3.get_object(Bucket=bucket, Key="team-b/ckpt/team/latest")["Body"].read())
    assert latest == {"format": 1, "step": 4, "manifest": "team-b/ckpt/team/step_4.manifest.json"}
    # Fetch finds the run's objects under its own prefix.
    shutil.rmtree(os.path.join(d.root, "team", "weights"))
    os.makedirs(os.path.join(d.root, "team", "weights"))
    d.stop()
    d.start(env=d.s3_env)
    run = ckptd.connect(d.target).open_run("team", transport="stream",
                                           tier={"prefix": "team-b/ckpt", "remote_retention": "same"})
    into = {"w": np.zeros(1000, np.float32)}
    assert run.restore(model=into, remote=True).step == 4
    assert np.array_equal(into["w"], np.full(1000, 4, np.float32))
    fetched = tmp_path / "fetched"
    r = subprocess.run([CKPTCTL, "fetch", "team", "3", "--config", str(tmp_path / "tier.toml"),
                        "--prefix", "team-b/ckpt", "-o", str(fetched)], env={**os.environ, **d.s3_env},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and (fetched / "step_3.gguf").exists(), r.stderr

    for bad, code, words in [
            ({"prefix": "/abs"}, "INVALID_ARGUMENT", "starts or ends with '/'"),
            ({"prefix": "a/../b"}, "INVALID_ARGUMENT", "'..' segment"),
            ({"remote_retention": "forever"}, "INVALID_ARGUMENT", "is not \"keep_all\"")]:
        with pytest.raises(ckptd.Error) as e:
            ckptd.connect(d.target).open_run("refused", transport="stream", tier=bad)
        assert e.value.code == code and words in e.value.message, e.value.message
    assert not os.path.exists(os.path.join(d.root, "refused"))  # nothing left behind
    d.stop()
    # A daemon without the tier refuses options that need it, not local_only.
    plain_daemon = Daemon(tmp_path / "plain")
    os.makedirs(tmp_path / "plain", exist_ok=True)
    plain_daemon.start()
    try:
        c = ckptd.connect(plain_daemon.target)
        with pytest.raises(ckptd.Error) as e:
            c.open_run("r", transport="stream", tier={"prefix": "team-b"})
        assert e.value.code == "FAILED_PRECONDITION"
        assert "has no object-storage tier" in e.value.message, e.value.message
        assert c.open_run("r", transport="stream", tier={"local_only": True}) is not None
    finally:
        plain_daemon.stop()


def test_listings_say_where_each_step_lives_local_both_or_only_in_the_store(tmp_path, store, bucket):
    import numpy as np

    import ckptd

    d = tier_daemon(tmp_path, store, bucket, http=True)
    port = http_port(d)
    run = ckptd.connect(d.target).open_run("where", transport="stream", retention={"keep_last": 1})
    for step in (1, 2, 3):
        assert run.save(step, {"w": np.full(1000, step, np.float32)},
                        metrics={"loss": 1.0 / step}).state == "committed"
    uploaded(d, "where", [1, 2, 3])
    # Local retention (keep_last 1) drops 1 and 2 once they are in the store.

    def ctl(*a):
        return subprocess.run([CKPTCTL, "--socket", d.target, *a], capture_output=True, text=True, timeout=60)
    wait_for(lambda: [c["step"] for c in json.loads(ctl("ls", "where", "--json").stdout)["checkpoints"]] == ["3"],
             30, "local retention")
    local = json.loads(ctl("ls", "where", "--json").stdout)["checkpoints"]
    assert local[0]["location"] == "both"
    both = {c["step"]: c for c in json.loads(ctl("ls", "where", "--remote", "--json").stdout)["checkpoints"]}
    assert {k: v["location"] for k, v in both.items()} == {"1": "remote", "2": "remote", "3": "both"}
    assert both["1"]["file"] == f"s3://{bucket}/ckpt/where/step_1.gguf"
    assert both["1"]["metrics"] == {"loss": 1.0} and both["1"]["uuid"] and int(both["1"]["size_bytes"]) > 4000
    table = ctl("ls", "where", "--remote").stdout
    assert re.search(r"^\s+1 .* remote ", table, re.M) and re.search(r"^\s+3 .* both ", table, re.M), table
    # The JSON API, paged: remote-only and local steps in one ascending order.
    page = json.loads(urllib.request.urlopen(
        f"http://127.0.0.1:{port}/v1/runs/where/checkpoints?remote=1&page_size=2", timeout=10).read())
    assert [c["step"] for c in page["checkpoints"]] == ["1", "2"] and page["next_page_token"] == "2"
    page = json.loads(urllib.request.urlopen(
        f"http://127.0.0.1:{port}/v1/runs/where/checkpoints?remote=1&page_size=2&page_token=2",
        timeout=10).read())
    assert [c["step"] for c in page["checkpoints"]] == ["3"] and not page.get("next_page_token")
    # The state file keeps only what is still asked about (steps on the
    # node, and the newest uploaded): it does not grow with the run.
    assert run.save(4, {"w": np.full(1000, 4, np.float32)}).state == "committed"
    state_path = os.path.join(d.root, "where", "ckptd-uploads.json")
    wait_for(lambda: json.load(open(state_path)).get("uploaded") == [4], 30,
             "the state file to forget steps deleted locally")
    # A store that does not answer: UNAVAILABLE naming it, not a hang.
    subprocess.run([DEV_S3, "kill", store["dir"], "rgw"], check=True, timeout=60)
    try:
        t0 = time.monotonic()
        r = ctl("ls", "where", "--remote")
        assert r.returncode != 0 and "where: object store: GET" in r.stderr, r.stderr
        assert "prefix=ckpt%2Fwhere%2F" in r.stderr and "cannot reach ckptd" not in r.stderr, r.stderr
        assert time.monotonic() - t0 < 30
        assert ctl("ls", "where").returncode == 0  # the local listing does not need the store
        t0 = time.monotonic()  # nor does a remote plan wait for the store to come back
        r = ctl("retention", "plan", "where", "--remote")
        assert r.returncode != 0 and "object store: GET" in r.stderr, r.stderr
        assert time.monotonic() - t0 < 30
    finally:
        subprocess.run([DEV_S3, "revive", store["dir"]], check=True, timeout=240)
    d.stop()


def test_the_scrubber_heals_from_the_store_and_repairs_the_stores_copy_from_disk(tmp_path, store, bucket):
    """Both ways: a step that rots on disk comes back from the store, byte
    for byte; an object that rots or vanishes in the store is uploaded
    again from the intact local file."""
    import numpy as np

    import ckptd

    d = tier_daemon(tmp_path, store, bucket, http=True,
                    extra_toml="[storage]\nscrub_bytes_per_second = 1073741824\n"
                               "scrub_min_age_seconds = 0\n")
    model = {"w": np.random.default_rng(9).standard_normal((1000, 700), dtype=np.float32)}
    run = ckptd.connect(d.target).open_run("healed", transport="stream")
    for step in (1, 2, 3):
        saved = {"w": model["w"] + step}
        assert run.save(step, saved, extra={"next_step": step + 1}).state == "committed"
    uploaded(d, "healed", [1, 2, 3])
    s3 = s3_client(store)
    weights = os.path.join(d.root, "healed", "weights")
    original = {s: open(os.path.join(weights, f"step_{s}.gguf"), "rb").read() for s in (1, 2, 3)}

    # A bit flipped on disk: quarantined by the scrubber, fetched back whole.
    path = os.path.join(weights, "step_2.gguf")
    with open(path, "r+b") as f:
        f.seek(len(original[2]) - 4096)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x10]))
    wait_for(lambda: "scrub run=healed step=2 healed from the object store" in open(d.log).read(), 60,
             "step 2 healed from the store")
    assert open(path, "rb").read() == original[2]
    into = {"w": np.zeros_like(model["w"])}
    assert run.restore(model=into, step=2).step == 2
    assert np.array_equal(into["w"], model["w"] + 2)

    # A bit flipped in the store's copy of step 1, and step 3's object gone:
    # each is uploaded again from the intact local file.
    key1, key3 = "ckpt/healed/step_1.gguf", "ckpt/healed/step_3.gguf"
    body = bytearray(s3.get_object(Bucket=bucket, Key=key1)["Body"].read())
    assert bytes(body) == original[1]
    body[len(body) - 4096] ^= 0x10
    s3.put_object(Bucket=bucket, Key=key1, Body=bytes(body))
    s3.delete_object(Bucket=bucket, Key=key3)

    def remote(key):
        try:
            return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except s3.exceptions.NoSuchKey:
            return None

    wait_for(lambda: remote(key1) == original[1] and remote(key3) == original[3], 90,
             "the store's copies of steps 1 and 3 repaired")
    log = open(d.log).read()
    assert re.search(r"scrub run=healed step=1: the object store's copy cannot be trusted "
                     r"\(\S+/ckpt/healed/step_1\.gguf: .*digest", log), log
    assert re.search(r"scrub run=healed step=3: the object store's copy cannot be trusted "
                     r"\(\S+/ckpt/healed/step_3\.gguf is missing\)", log), log
    assert metric_at_least(d, 'ckptd_remote_repairs_total{run="healed"}', 2) == 2
    metric_at_least(d, 'ckptd_quarantined_files_total{run="healed",by="scrub"}', 1)
    check_consistent(s3, bucket, "ckpt/healed/")


def test_unchanged_tensors_are_copied_inside_the_store_not_sent(tmp_path, store, bucket):
    """A run whose frozen tensors (90 % of its bytes) do not change: after
    the first step, each upload copies them inside RGW from the previous
    step's object (UploadPartCopy) and sends only what changed (the header
    goes with the changed tensor, stored first); every object is byte for
    byte its local file, and fetch and restore read it as any other."""
    import numpy as np

    import ckptd
    import ckptd.gguf

    d = tier_daemon(tmp_path, store, bucket, http=True)
    rng = np.random.default_rng(11)
    frozen = {f"blk.{i}.w": rng.standard_normal(2 * MiB, dtype=np.float32) for i in range(9)}
    run = ckptd.connect(d.target).open_run("frozen", transport="stream")
    steps = [1, 2, 3]
    for step in steps:
        head = {"head.w": np.full(2 * MiB, step, np.float32)}  # 8 MiB, changed every step
        assert run.save(step, {**head, **frozen}).state == "committed"
        uploaded(d, "frozen", [step])
    s3 = s3_client(store)
    sent = {}
    for step in steps:
        m = json.loads(s3.get_object(Bucket=bucket, Key=f"ckpt/frozen/step_{step}.manifest.json")
                       ["Body"].read())
        (f,) = [f for f in m["files"] if f["role"] == "model"]
        local = open(os.path.join(d.root, "frozen", "weights", f["name"]), "rb").read()
        assert s3.get_object(Bucket=bucket, Key=f["key"])["Body"].read() == local, f["key"]
        sent[step] = f["size"] - f.get("copied_bytes", 0)
        header = ckptd.gguf.read_header(os.path.join(d.root, "frozen", "weights", f["name"]))
        changed = header.data_offset + 8 * MiB
        if step > 1:
            assert sent[step] <= 1.1 * changed, (step, sent[step], changed)
            assert f["copied_bytes"] >= 9 * 8 * MiB
    assert sent[1] >= 80 * MiB  # the first step sends everything
    metric_at_least(d, 'ckptd_tier_copied_bytes_total{run="frozen"}', 2 * 9 * 8 * MiB)
    # Fetched back into another directory, step 3 verifies and loads exactly.
    env = {**os.environ, **d.s3_env}
    cfg = str(tmp_path / "tier.toml")
    with open(cfg, "a") as f:
        f.write(f'[storage]\nroots = ["{d.root}"]\n')
    out = tmp_path / "fetched"
    r = subprocess.run([CKPTCTL, "fetch", "frozen", "3", "-o", str(out), "--config", cfg],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    v = subprocess.run([CKPTCTL, "verify", str(out / "step_3.gguf")], capture_output=True, text=True)
    assert v.returncode == 0, v.stdout + v.stderr
    loaded = ckptd.load(str(out / "step_3.gguf"))
    assert np.array_equal(loaded["head.w"], np.full(2 * MiB, 3, np.float32))
    assert all(np.array_equal(loaded[k], v) for k, v in frozen.items())
    # Step 3's object rots in the store (a frozen byte flipped, its header
    # intact): step 4's copies from it would carry the flip, their ETags
    # say so, and step 4 is sent whole instead, byte for byte its file.
    key = "ckpt/frozen/step_3.gguf"
    body = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 1
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    assert run.save(4, {"head.w": np.full(2 * MiB, 4, np.float32), **frozen}).state == "committed"
    uploaded(d, "frozen", [4])
    m = json.loads(s3.get_object(Bucket=bucket, Key="ckpt/frozen/step_4.manifest.json")["Body"].read())
    (f,) = [f for f in m["files"] if f["role"] == "model"]
    assert f.get("copied_bytes", 0) == 0, f
    local = open(os.path.join(d.root, "frozen", "weights", "step_4.gguf"), "rb").read()
    assert s3.get_object(Bucket=bucket, Key=f["key"])["Body"].read() == local
    assert "copying from ckpt/frozen/step_3.gguf failed" in open(d.log).read()
