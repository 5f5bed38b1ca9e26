"""deploy/Dockerfile, .dockerignore and the image's entry scripts, checked without docker (none
here): multi-stage on python:3.11-slim, pinned installs, a non-root final USER, no secret, every
COPY source present and not excluded, the dataflow entry file waxctl needs; the recovery init
script run for real against a directory (twice: the second run keeps the partitions)."""

from __future__ import annotations

import ast
import fnmatch
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") and not buf:
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        line = buf + line
        buf = ""
        if line.strip():
            word, _sp, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for ins in instructions():
        if ins[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def dockerignore() -> list[str]:
    return [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")]


def ignored(path: str) -> bool:
    for pattern in dockerignore():
        p = pattern.lstrip("/")
        if fnmatch.fnmatch(path, p) or path.startswith(p.rstrip("/") + "/") or fnmatch.fnmatch(path, p.replace("**/", "")):
            return True
    return False


def test_multi_stage_on_python_311_slim():
    args = dict(a.split("=", 1) for w, a in instructions() if w == "ARG" and "=" in a)
    froms = [a for w, a in instructions() if w == "FROM"]
    assert len(froms) >= 2, froms
    assert re.search(r"\bAS build\b", froms[0], re.I)
    base = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.1[12]-slim", base), base  # bytewax 0.21.1: Python 3.11/3.12
    assert all(f.split()[0] in ("${PYTHON_IMAGE}", base) for f in froms)
    final = stages()[-1]
    copies_from_build = [a for w, a in final if w == "COPY" and a.startswith("--from=build")]
    assert any("/opt/venv" in a for a in copies_from_build)
    assert not any(w == "RUN" and "pip install" in a for w, a in final)  # no build tools in the runtime stage


def test_final_user_is_not_root():
    users = [a for w, a in stages()[-1] if w == "USER"]
    assert users, "the runtime stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert int(user) == 65532  # the uid bytewax's chart runs as (deploy/helm/values.yaml podSecurityContext)


def test_dependencies_are_installed_with_the_pinned_constraints():
    build = stages()[0]
    copied = " ".join(a for w, a in build if w == "COPY")
    assert "constraints.txt" in copied
    installs = [a for w, a in build if w == "RUN" and "pip install" in a]
    assert installs and all("-c constraints.txt" in a for a in installs), installs
    pins = {l.split("==")[0].lower() for l in (ROOT / "constraints.txt").read_text().splitlines() if "==" in l}
    assert {"bytewax", "numpy", "websockets", "psycopg", "grafana-client", "prometheus_client"} <= pins


def test_no_secret_in_the_image():
    for word, args in instructions():
        if word in ("ENV", "ARG", "LABEL"):
            for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", args):
                assert not re.search(r"TOKEN|PASSWORD|SECRET|DSN|API_KEY", name, re.I), (word, name)
    text = DOCKERFILE.read_text()
    assert "VOLGRAPH_PG_DSN" not in text and "GRAFANA_TOKEN" not in text
    for pattern in (".env", "*.pem", "*.key", ".data", ".venv", ".git", "tests"):
        assert any(fnmatch.fnmatch(pattern, p.replace("**/", "")) or p.endswith(pattern) for p in dockerignore()), pattern


def test_every_copy_source_exists_and_is_not_ignored():
    for word, args in instructions():
        if word != "COPY" or args.startswith("--from"):
            continue
        parts = shlex.split(args)
        for src in parts[:-1]:
            path = src.rstrip("/")
            assert (ROOT / path).exists(), src
            assert not ignored(path), f"{src} is excluded by .dockerignore"


def test_the_entry_file_waxctl_runs_defines_the_flow():
    entry = ROOT / "deploy" / "dataflow.py"
    tree = ast.parse(entry.read_text())
    assigned = {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                if isinstance(t, ast.Name)}
    assert "flow" in assigned
    imports = {(n.module, a.name) for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
    assert ("flows.surface", "default_flow") in imports
    copied = " ".join(a for w, a in instructions() if w == "COPY")
    assert "deploy/dataflow.py" in copied and "deploy/entrypoint.sh" in copied
    script = (ROOT / "deploy" / "entrypoint.sh").read_text()
    assert re.search(r"^exec tini .*python -m bytewax\.run \"\$entry:flow\"$", script, re.M)
    assert "/app/deploy/dataflow.py" in script
    workdir = [a for w, a in stages()[-1] if w == "WORKDIR"][-1]
    assert workdir == "/app"  # the chart runs `sh ./entrypoint.sh` in the image's WORKDIR


def _run_recovery_init(directory: Path, parts: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, BYTEWAX_RECOVERY_DIRECTORY=str(directory), BYTEWAX_RECOVERY_PARTS=str(parts),
               PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    return subprocess.run(["sh", str(ROOT / "deploy" / "entrypoint-recovery.sh")], env=env, capture_output=True,
                          text=True, timeout=120)


def test_recovery_init_creates_partitions_once_and_keeps_them(tmp_path):
    directory = tmp_path / "recovery"
    first = _run_recovery_init(directory, 2)
    assert first.returncode == 0, first.stderr
    parts = sorted(p.name for p in directory.glob("part-*.sqlite3"))
    assert parts == ["part-0.sqlite3", "part-1.sqlite3"]
    stamp = {p: (directory / p).stat().st_mtime_ns for p in parts}
    again = _run_recovery_init(directory, 2)  # a pod restart: bytewax's own init would fail here
    assert again.returncode == 0, again.stderr
    assert "already holds 2 partition(s); keeping them" in again.stdout
    assert {p: (directory / p).stat().st_mtime_ns for p in parts} == stamp


def test_recovery_init_names_the_missing_variable(tmp_path):
    env = {"PATH": os.environ.get("PATH", "")}
    result = subprocess.run(["sh", str(ROOT / "deploy" / "entrypoint-recovery.sh")], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert "BYTEWAX_RECOVERY_DIRECTORY" in result.stderr


def test_the_files_the_image_copies_are_enough_to_run(tmp_path):
    """The image's /app, rebuilt from the Dockerfile's COPY lines (build stage, sources from
    this checkout), imports and builds the dataflow from deploy/dataflow.py on its own: graph.toml,
    deploy/sql and dashboard/ are found beside the packages, nothing is read from the checkout."""
    import shutil

    app = tmp_path / "app"
    app.mkdir()
    for word, args in stages()[0]:
        if word != "COPY":
            continue
        *sources, dest = shlex.split(args)
        for src in sources:
            source = ROOT / src.rstrip("/")
            # Docker's rules: a directory's contents go into dest; a file goes into dest/ (a
            # trailing slash or ".") or becomes dest
            if source.is_dir():
                target = app / dest
            elif dest.endswith("/") or dest == ".":
                target = app / dest / source.name
            else:
                target = app / dest
            if source.is_dir():
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
    assert (app / "entrypoint.sh").exists() and (app / "deploy" / "dataflow.py").exists()
    config = tmp_path / "graph.toml"
    config.write_text('[sources.okx]\nenabled = false\n\n[sinks.postgres]\nenabled = false\n')
    probe = (
        "import runpy, flows.config as c, connectors.postgres.schema as s, connectors.gateway.web as w\n"
        "ns = runpy.run_path('deploy/dataflow.py')\n"
        "print(type(ns['flow']).__name__, c.DEFAULT_PATH, s.SQL_DIR, w.DASHBOARD_DIR)\n"
        "assert c.DEFAULT_PATH.exists() and any(s.SQL_DIR.glob('*.sql')) and (w.DASHBOARD_DIR / 'index.html').exists()\n"
    )
    # -S: no site processing, so this checkout's editable-install finder (a .pth hook) stays out;
    # the third-party packages come from site-packages put on the path by hand, as in the image
    import sysconfig

    site_packages = sysconfig.get_paths()["purelib"]
    env = dict(os.environ, PYTHONPATH=f"{app}:{site_packages}", VOLGRAPH_CONFIG=str(config),
               VOLGRAPH_METRICS_PORT="0", NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    result = subprocess.run([sys.executable, "-S", "-c", probe], cwd=app, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    kind, *paths = result.stdout.split()[-4:]
    assert kind == "Dataflow"
    assert all(p.startswith(str(app)) for p in paths), paths  # the copied tree, not this checkout
