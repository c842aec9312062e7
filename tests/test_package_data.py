"""The unit files and plists are package data: a pip install (a wheel) carries
them, identical to the top-level systemd/ and launchd/ files, and
`install-service` works from it, naming the Python that runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.helpers.netlab import missing

REPO = Path(__file__).resolve().parents[1]
SERVICE_FILES = [
    "systemd/egresswatch.service",
    "systemd/egresswatch-notifier.service",
    "launchd/org.egresswatch.daemon.plist",
    "launchd/org.egresswatch.notifier.plist",
]


def test_package_data_is_the_top_level_files() -> None:
    from importlib import resources

    for rel in SERVICE_FILES:
        shipped = resources.files("egresswatch").joinpath("data", rel).read_bytes()
        assert shipped == (REPO / rel).read_bytes(), rel


def test_wheel_carries_them_and_install_service_works_from_it(tmp_path: Path) -> None:
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(REPO)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if build.returncode != 0:
        missing(f"cannot build a wheel here (pip wheel: {build.stderr.strip().splitlines()[-1:]})")
    (wheel,) = (tmp_path / "dist").glob("egresswatch-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        for rel in SERVICE_FILES:
            assert zf.read(f"egresswatch/data/{rel}") == (REPO / rel).read_bytes(), rel
        zf.extractall(tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    where = subprocess.run([sys.executable, "-c", "import egresswatch; print(egresswatch.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, check=True)  # fmt: skip
    assert where.stdout.startswith(str(tmp_path / "site")), where.stdout  # not the source checkout
    result = subprocess.run(
        [sys.executable, "-m", "egresswatch", "install-service", "--prefix", str(tmp_path / "root")],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    unit = (tmp_path / "root/etc/systemd/system/egresswatch.service").read_text()
    assert f"ExecStart={sys.executable} -m egresswatch run" in unit
    assert "/usr/local/bin/egresswatch" not in unit
