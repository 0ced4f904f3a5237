"""The API over TCP: TLS, client certificates and bearer tokens, against the
real daemon with certificates made by openssl for each test session; and
the HTTP API's read token. Each refusal must be a clear status, and a
secret must never reach the daemon's log."""

import contextlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

import ckptd
from ckptd.v1 import ckptd_pb2 as pb
from conftest import logged_port

BINARY = os.environ.get("CKPTD_BINARY",
                        os.path.join(os.path.dirname(__file__), "..", "..", "build", "daemon", "ckptd"))
CKPTCTL = os.environ.get("CKPTCTL_BINARY",
                         os.path.join(os.path.dirname(BINARY), "..", "client", "cli", "ckptctl"))
TOKEN_LLAMA = "llama-token-" + "a1" * 16
TOKEN_ALL = "admin-token-" + "b2" * 16


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _issue(d, name, ca, usage, san=None):
    """A P-256 key and a certificate for it signed by `ca` (name of the CA files)."""
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    ext = f"extendedKeyUsage={usage}\n" + (f"subjectAltName={san}\n" if san else "")
    with open(os.path.join(d, f"{name}.ext"), "w") as f:
        f.write(ext)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext", cwd=d)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("certs"))
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2",
                 "-subj", f"/CN=ckptd test {ca}", cwd=d)
    _issue(d, "server", "ca", "serverAuth", "IP:127.0.0.1,DNS:localhost")
    _issue(d, "trainer", "ca", "clientAuth")
    _issue(d, "stranger", "other-ca", "clientAuth")
    return lambda name: os.path.join(d, name)


@contextlib.contextmanager
def tcp_daemon(tmp, config, args=(), expect_start=True):
    """The daemon on 127.0.0.1:<a free port it picks> with `config` (TOML text)."""
    cfg = tmp / "ckptd.toml"
    cfg.write_text(config)
    log = tmp / "daemon.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([BINARY, "--root", str(tmp / "runs"), "--listen", "127.0.0.1:0",
                                 "--config", str(cfg), "--log-level", "debug", *args],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while "ready: listening" not in log.read_text():
            if proc.poll() is not None:
                if expect_start:
                    raise RuntimeError("ckptd did not start:\n" + log.read_text()[-2000:])
                break
            assert time.monotonic() < deadline, "ckptd did not start in 30 s:\n" + log.read_text()
            time.sleep(0.02)
        port = logged_port(str(log), "ready") if proc.poll() is None else 0
        yield proc, f"127.0.0.1:{port}", log
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)


def _tls_config(certs, extra=""):
    return (f'[server]\ntls_cert = "{certs("server.pem")}"\ntls_key = "{certs("server.key")}"\n'
            + extra)


def _tokens_config(tmp, certs, text, mode):
    tokens = tmp / "tokens"
    tokens.write_text(text)
    os.chmod(tokens, mode)
    return _tls_config(certs, f'tokens_file = "{tokens}"\n')


def _save_and_restore(client, run_id):
    run = client.open_run(run_id, transport="stream")
    w = np.arange(64, dtype=np.float32)
    assert run.save(10, {"w": w}).state == "committed"
    with run.open_checkpoint() as c:
        assert c.step == 10
        np.testing.assert_array_equal(c.read_all("numpy")["w"], w)


def _refused(fn, code, *fragments):
    with pytest.raises(ckptd.Error) as e:
        fn()
    assert e.value.code == code, e.value
    for f in fragments:
        assert f in e.value.message, e.value.message
    return e.value


def test_tls_serves_trainers_and_refuses_plaintext_clients(tmp_path, certs):
    cfg = _tls_config(certs)
    with tcp_daemon(tmp_path, cfg) as (_, target, log):
        _save_and_restore(ckptd.connect(target, reconnect_timeout=0, tls_ca=certs("ca.pem")), "tls")
        plain = ckptd.connect(target, reconnect_timeout=0)
        _refused(lambda: plain.open_run("plain", transport="stream"), "UNAVAILABLE")
        # A client that does not trust the daemon's CA does not talk to it either.
        wrong_ca = ckptd.connect(target, reconnect_timeout=0, tls_ca=certs("other-ca.pem"))
        _refused(lambda: wrong_ca.open_run("mitm", transport="stream"), "UNAVAILABLE")
        ok = subprocess.run([CKPTCTL, "runs", "--socket", target, "--tls-ca", certs("ca.pem")],
                            capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0 and "tls" in ok.stdout, ok.stderr
        bad = subprocess.run([CKPTCTL, "runs", "--socket", target], capture_output=True, text=True,
                             timeout=60)
        assert bad.returncode != 0 and "--tls-ca" in bad.stderr, bad.stderr
        # A TLS file that is no PEM, or one gRPC cannot load: ckptctl's one
        # line names the file or the flags, with no gRPC core log before it.
        junk = tmp_path / "junk.pem"
        junk.write_text("not a certificate\n")
        garbled = tmp_path / "garbled.pem"
        garbled.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
        for pem, says in ((junk, f"{junk} holds no PEM certificate"), (garbled, "--tls-ca is the PEM CA")):
            r = subprocess.run([CKPTCTL, "runs", "--socket", target, "--tls-ca", str(pem)],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode != 0 and says in r.stderr, r.stderr
            assert r.stderr.startswith("ckptctl: ") and r.stderr.count("\n") == 1, r.stderr
        assert "TLS on 127.0.0.1" in log.read_text()
    assert not (tmp_path / "runs" / "plain").exists()


def test_one_host_cannot_take_every_stream(tmp_path, certs):
    """server.max_streams_per_peer = 3: a host's fourth held stream (watch or
    save) is refused naming the setting and the host; one ended, the next fits."""
    cfg = _tls_config(certs, "max_streams_per_peer = 3\n")
    with tcp_daemon(tmp_path, cfg) as (_, target, _log):
        client = ckptd.connect(target, reconnect_timeout=0, tls_ca=certs("ca.pem"))
        client.open_run("w", transport="stream")
        watches = [client.stub.WatchRun(pb.WatchRunRequest(run_id="w")) for _ in range(3)]
        time.sleep(0.5)
        assert not any(w.done() for w in watches)
        fourth = client.stub.WatchRun(pb.WatchRunRequest(run_id="w"), timeout=10)
        with pytest.raises(Exception) as e:
            next(fourth)
        assert e.value.code().name == "RESOURCE_EXHAUSTED", e.value
        assert "server.max_streams_per_peer" in e.value.details()
        assert "ipv4:127.0.0.1 already holds 3" in e.value.details(), e.value.details()
        # A save stream counts too; once a watch ends, it fits.
        with pytest.raises(Exception) as e:
            client.open_run("w", transport="stream").save(1, {"x": np.zeros(4, np.float32)})
        assert "server.max_streams_per_peer" in str(e.value), e.value
        watches[0].cancel()
        time.sleep(0.5)
        run = client.open_run("w", transport="stream")
        assert run.save(1, {"x": np.zeros(4, np.float32)}).state == "committed"
        for w in watches:
            w.cancel()


def test_client_certificates_when_the_daemon_requires_them(tmp_path, certs):
    cfg = _tls_config(certs, f'tls_client_ca = "{certs("ca.pem")}"\n')
    with tcp_daemon(tmp_path, cfg) as (_, target, _log):
        trainer = ckptd.connect(target, reconnect_timeout=0, tls_ca=certs("ca.pem"),
                                tls_cert=certs("trainer.pem"), tls_key=certs("trainer.key"))
        _save_and_restore(trainer, "mtls")
        anonymous = ckptd.connect(target, reconnect_timeout=0, tls_ca=certs("ca.pem"))
        _refused(lambda: anonymous.open_run("anon", transport="stream"), "UNAVAILABLE")
        stranger = ckptd.connect(target, reconnect_timeout=0, tls_ca=certs("ca.pem"),
                                 tls_cert=certs("stranger.pem"), tls_key=certs("stranger.key"))
        _refused(lambda: stranger.open_run("stranger", transport="stream"), "UNAVAILABLE")
    for refused in ("anon", "stranger"):
        assert not (tmp_path / "runs" / refused).exists()


def test_bearer_tokens_grant_runs_by_prefix(tmp_path, certs):
    cfg = _tokens_config(tmp_path, certs,
                         f"# prefix token\nllama- {TOKEN_LLAMA}\n*      {TOKEN_ALL}   # ops\n", 0o600)
    with tcp_daemon(tmp_path, cfg) as (_, target, log):
        def connect(token=None):
            return ckptd.connect(target, reconnect_timeout=0, tls_ca=certs("ca.pem"), token=token)

        _refused(lambda: connect().open_run("llama-7b", transport="stream"), "UNAUTHENTICATED",
                 "requires a bearer token")
        _refused(lambda: connect("x" * 40).open_run("llama-7b", transport="stream"),
                 "UNAUTHENTICATED", "not one this daemon knows")
        llama = connect(TOKEN_LLAMA)
        _save_and_restore(llama, "llama-7b")
        _refused(lambda: llama.open_run("mistral", transport="stream"), "PERMISSION_DENIED",
                 "'llama-*'", "'mistral'")
        admin = connect(TOKEN_ALL)
        _save_and_restore(admin, "mistral")
        # Listing: each token sees only the runs it covers.
        assert [r.run_id for r in llama.stub.ListRuns(pb.ListRunsRequest()).runs] == ["llama-7b"]
        assert sorted(r.run_id for r in admin.stub.ListRuns(pb.ListRunsRequest()).runs) == [
            "llama-7b", "mistral"]
        # Reading another run's checkpoints is refused like writing them.
        _refused(lambda: ckptd.client._rpc(llama.stub.GetRun, pb.GetRunRequest(run_id="mistral")),
                 "PERMISSION_DENIED", "'mistral'")
        # ckptctl with a token file.
        token_file = tmp_path / "llama.token"
        token_file.write_text(TOKEN_LLAMA + "\n")
        out = subprocess.run([CKPTCTL, "ls", "llama-7b", "--socket", target, "--tls-ca",
                              certs("ca.pem"), "--token-file", str(token_file)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "10" in out.stdout, out.stderr
        text = log.read_text()
        assert "refused ipv4:127.0.0.1" in text and "run=mistral" in text, text[-3000:]
        for secret in (TOKEN_LLAMA, TOKEN_ALL):
            assert secret not in text
    assert not (tmp_path / "runs" / "mistral-by-llama").exists()


def test_a_token_file_others_can_read_is_refused(tmp_path, certs):
    cfg = _tokens_config(tmp_path, certs, f"* {TOKEN_ALL}\n", 0o644)
    with tcp_daemon(tmp_path, cfg, expect_start=False) as (proc, _, log):
        assert proc.wait(30) != 0
        text = log.read_text()
        assert "other users can read this token file" in text and "chmod o-rwx" in text, text
        assert TOKEN_ALL not in text


def test_plaintext_tcp_needs_an_explicit_insecure(tmp_path):
    with tcp_daemon(tmp_path, "", expect_start=False) as (proc, _, log):
        assert proc.wait(30) != 0
        assert "is TCP without TLS" in log.read_text() and "server.insecure" in log.read_text()
    with tcp_daemon(tmp_path, "", args=["--insecure"]) as (_, target, log):
        _save_and_restore(ckptd.connect(target, reconnect_timeout=0), "plain")
        assert "serves plaintext TCP" in log.read_text()
    # A token over plaintext is refused by the client, before anything is sent.
    _refused(lambda: ckptd.connect("127.0.0.1:1", token=TOKEN_ALL), "INVALID_ARGUMENT", "TLS")


def _get(url, headers=None):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}),
                                    timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def test_the_http_api_needs_its_read_token(tmp_path):
    token = tmp_path / "http.token"
    token.write_text(TOKEN_ALL + "\n")
    os.chmod(token, 0o600)
    cfg = f'[http]\nlisten = "127.0.0.1:0"\ntoken_file = "{token}"\n'
    with tcp_daemon(tmp_path, cfg, args=["--insecure"]) as (_, _target, log):
        http_port = logged_port(str(log))
        base = f"http://127.0.0.1:{http_port}"
        status, headers, body = _get(base + "/v1/runs")
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        assert "http.token_file" in json.loads(body)["error"]["message"]
        assert _get(base + "/v1/runs", {"Authorization": "Bearer wrong-" + "0" * 20})[0] == 401
        assert _get(base + "/metrics")[0] == 401
        assert _get(base + "/v1/runs", {"Authorization": "Bearer " + TOKEN_ALL})[0] == 200
        assert _get(base + f"/v1/runs?token={TOKEN_ALL}")[0] == 200  # EventSource's way
        # Probes and the page itself (which holds no data) need no token.
        for path in ("/healthz", "/readyz", "/"):
            assert _get(base + path)[0] == 200, path
        assert TOKEN_ALL not in log.read_text()


def test_the_http_listener_serves_https_only_with_a_certificate(tmp_path, certs):
    """http.tls_cert + http.tls_key: the JSON API, the probes and an event
    stream over HTTPS, verified against the test CA; plain HTTP on that port
    and a client that does not trust the certificate get nothing."""
    import http.client
    import ssl

    token = tmp_path / "http.token"
    token.write_text(TOKEN_ALL + "\n")
    os.chmod(token, 0o600)
    cfg = (f'[http]\nlisten = "127.0.0.1:0"\ntoken_file = "{token}"\n'
           f'tls_cert = "{certs("server.pem")}"\ntls_key = "{certs("server.key")}"\n')
    trusting = ssl.create_default_context(cafile=certs("ca.pem"))
    auth = {"Authorization": "Bearer " + TOKEN_ALL}
    with tcp_daemon(tmp_path, cfg, args=["--insecure"]) as (_, target, log):
        assert "HTTPS only" in log.read_text()
        http_port = logged_port(str(log))
        base = f"https://127.0.0.1:{http_port}"

        def get(path, headers=None, context=trusting):
            req = urllib.request.Request(base + path, headers=headers or {})
            try:
                with urllib.request.urlopen(req, timeout=30, context=context) as r:
                    return r.status, r.read()
            except urllib.error.HTTPError as e:
                return e.code, e.read()

        assert get("/healthz")[0] == 200
        assert get("/v1/runs")[0] == 401
        client = ckptd.connect(target)
        client.open_run("tls-http", transport="stream")
        status, body = get("/v1/runs", auth)
        assert status == 200 and b"tls-http" in body
        # An event stream over TLS sees a commit.
        conn = http.client.HTTPSConnection("127.0.0.1", http_port, context=trusting, timeout=30)
        conn.request("GET", "/v1/runs/tls-http/events", headers=auth)
        events = conn.getresponse()
        assert events.status == 200
        run = client.open_run("tls-http", transport="stream")
        assert run.save(3, {"w": np.ones(8, dtype=np.float32)}).state == "committed"
        seen = b""
        while b"event: committed" not in seen:
            line = events.fp.readline()
            assert line, seen
            seen += line
        conn.close()
        # Plain HTTP on the HTTPS port, and a client that does not trust the
        # server's certificate: no answer at all.
        with pytest.raises((OSError, http.client.HTTPException)):
            urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=30).read()
        with pytest.raises(urllib.error.URLError) as e:
            get("/healthz", context=ssl.create_default_context())
        assert isinstance(e.value.reason, ssl.SSLCertVerificationError)
        assert get("/healthz")[0] == 200  # still serving
        assert TOKEN_ALL not in log.read_text()


@pytest.mark.parametrize("keys,fragment", [
    ("cert", "http.tls_cert and http.tls_key go together"),
    ("cert+wrong-key", "http.tls_key: cannot use"),
])
def test_a_bad_https_setup_stops_the_daemon_naming_the_key(tmp_path, certs, keys, fragment):
    cfg = f'[http]\nlisten = "127.0.0.1:0"\ntls_cert = "{certs("server.pem")}"\n'
    if keys == "cert+wrong-key":
        cfg += f'tls_key = "{certs("trainer.key")}"\n'
    with tcp_daemon(tmp_path, cfg, args=["--insecure"], expect_start=False) as (proc, _, log):
        assert proc.wait(30) != 0
        assert fragment in log.read_text(), log.read_text()[-2000:]
