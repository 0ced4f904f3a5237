"""The Python package as users install it: the wheel `make build` leaves in
build/python/dist, installed with pip into a fresh virtual environment that
sees Debian's packages (grpcio, protobuf, numpy, torch), then the README's
quickstart run from a directory outside the repository without PYTHONPATH.
Also: the public API carries type hints (py.typed makes a type checker read
them), and the wheel holds the generated stubs and declares its
dependencies."""

import glob
import inspect
import os
import subprocess
import zipfile

import pytest

import ckptd
from conftest import ROOT, Daemon

SYSTEM_PYTHON = "/usr/bin/python3"


def wheel():
    found = sorted(glob.glob(os.path.join(os.environ.get("CKPTD_PYTHON_LIB", os.path.join(
        ROOT, "build", "python", "lib")), "..", "dist", "ckptd-*-py3-none-any.whl")))
    assert found, "no wheel under build/python/dist: make build makes it"
    return os.path.abspath(found[-1])


def untyped_public_api():
    """Every parameter and return of ckptd.__all__ (functions, and the public
    methods of its classes) without an annotation."""
    missing = []

    def check(fn, where):
        sig = inspect.signature(fn)
        for name, p in sig.parameters.items():
            if name not in ("self", "cls") and p.annotation is inspect.Parameter.empty:
                missing.append(f"{where}({name})")
        if fn.__name__ != "__init__" and sig.return_annotation is inspect.Signature.empty:
            missing.append(f"{where} -> ?")

    for name in ckptd.__all__:
        obj = getattr(ckptd, name)
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_") and attr not in ("__init__", "__enter__", "__exit__"):
                    continue
                if isinstance(member, property):
                    member = member.fget
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if inspect.isfunction(member):
                    check(member, f"{name}.{attr}")
        elif inspect.isfunction(obj):
            check(obj, name)
    return missing


def test_the_public_api_is_typed():
    assert untyped_public_api() == []
    assert os.path.exists(os.path.join(os.path.dirname(ckptd.__file__), "py.typed"))


def test_the_wheel_holds_the_stubs_and_declares_its_dependencies():
    with zipfile.ZipFile(wheel()) as z:
        names = set(z.namelist())
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    for want in ["ckptd/__init__.py", "ckptd/py.typed", "ckptd/v1/ckptd_pb2.py",
                 "ckptd/v1/ckptd_pb2_grpc.py", "ckptd/v1/ckptd_pb2.pyi"]:
        assert want in names
    assert f"Version: {ckptd.__version__}" in meta
    for dep in ["Requires-Dist: grpcio", "Requires-Dist: protobuf", "Requires-Dist: numpy",
                "Requires-Dist: torch", "Requires-Dist: xxhash", "Provides-Extra: torch"]:
        assert dep in meta, dep
    # Nothing generated was written into the source tree.
    assert not os.path.exists(os.path.join(ROOT, "client", "python", "ckptd", "v1"))
    assert not glob.glob(os.path.join(ROOT, "client", "python", "*.egg-info"))


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A fresh venv over Debian's site packages, with the wheel pip-installed
    offline (its dependencies must be met by Debian's packages)."""
    d = tmp_path_factory.mktemp("venv")
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--system-site-packages", str(d)], check=True,
                   timeout=120)
    py = str(d / "bin" / "python")
    r = subprocess.run([py, "-m", "pip", "install", "--no-index", "--no-build-isolation",
                        "--disable-pip-version-check", wheel()], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return py


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CKPTD_PYTHON_LIB", "CKPTD_SOCKET")}
    return {**env, **extra}


def test_the_readme_quickstart_runs_from_the_installed_wheel(venv, tmp_path):
    where = subprocess.run([venv, "-c", "import ckptd, ckptd.v1.ckptd_pb2; print(ckptd.__file__)"],
                           cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60)
    assert where.returncode == 0, where.stderr
    assert where.stdout.startswith(os.path.dirname(os.path.dirname(venv))), where.stdout
    assert not where.stdout.startswith(ROOT)
    readme = open(os.path.join(ROOT, "README.md")).read()
    quickstart = open(os.path.join(ROOT, "examples", "quickstart.py")).read()
    assert quickstart in readme
    d = Daemon(tmp_path).start()
    try:
        outside = tmp_path / "elsewhere"
        outside.mkdir()
        (outside / "quickstart.py").write_text(quickstart)
        for expect in ("fresh run", "resuming at step 3000"):
            r = subprocess.run([venv, "quickstart.py"], cwd=outside, env=clean_env(CKPTD_SOCKET=d.target),
                               capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stderr
            assert expect in r.stdout
    finally:
        d.stop()
    assert os.path.exists(os.path.join(d.root, "quickstart", "weights", "step_2999.gguf"))


def test_a_type_checker_reads_the_installed_hints(venv, tmp_path):
    """mypy over a user's program: py.typed makes it check calls into ckptd
    (a wrong argument type is reported), and nothing else is reported."""
    user = tmp_path / "train.py"
    user.write_text("import ckptd\n\n"
                    "run = ckptd.connect().open_run('typed')\n"
                    "run.save('not a step')\n"
                    "info = ckptd.load('x.gguf')\n")
    # torch is not followed, as in make lint: ckptd types its objects as Any,
    # and analysing it in full is most of mypy's time (about 40 s of CPU).
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\nignore_missing_imports = True\n\n"
                      "[mypy-torch,torch.*]\nfollow_imports = skip\nfollow_imports_for_stubs = True\n")
    r = subprocess.run([venv, "-m", "mypy", "--no-incremental", "--config-file", str(config), str(user)],
                       cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=300)
    errors = [ln for ln in r.stdout.splitlines() if ": error:" in ln]
    assert len(errors) == 1, r.stdout + r.stderr
    assert 'train.py:4: error: Argument 1 to "save" of "Run" has incompatible type "str"' in errors[0]
