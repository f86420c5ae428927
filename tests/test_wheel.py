"""The package as a user installs it: a wheel built from the checkout, installed into a fresh virtual
environment outside it, serves the page and predicts with the model it carries.

Building needs setuptools from PyPI (or pip's cache) and installing needs the runtime dependencies; both
are pinned by ``constraints.txt`` where it pins them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import venv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import REPO
from PIL import Image
from wsutil import ONE, drawing

from livedigit import preprocess as preprocessing
from livedigit.bench.served import ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@dataclass(frozen=True)
class Installed:
    """A virtual environment holding only the wheel and its dependencies, and a folder to run it in."""

    bin: Path
    workdir: Path

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / command[0]), *command[1:]],
            cwd=self.workdir,
            env=outside_the_checkout(),
            capture_output=True,
            text=True,
            timeout=300,
        )


def outside_the_checkout() -> dict[str, str]:
    """The environment without anything that would let the checkout's own files be imported."""
    return {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "VIRTUAL_ENV")}


def checked(command: list[str], env: dict[str, str]) -> str:
    """Run ``command``; its output (stdout and stderr) once it has succeeded."""
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built the way PyPI users get it: an sdist of the checkout, then a wheel from the sdist."""
    dist = tmp_path_factory.mktemp("dist")
    # PYTHONDONTWRITEBYTECODE would add a "byte-compiling is disabled" line to the build's own output.
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    output = checked([sys.executable, "-m", "build", "--outdir", str(dist), str(REPO)], env=environment)
    warnings = [line for line in output.splitlines() if re.search(r"warning", line, re.IGNORECASE)]
    assert not warnings, "\n".join(warnings)
    (built,) = dist.glob("livedigit-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("installed")
    venv.create(root / "venv", with_pip=True)
    bin_dir = root / "venv" / "bin"
    checked(
        [
            str(bin_dir / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-c",
            str(REPO / "constraints.txt"),
            str(wheel),
        ],
        env=outside_the_checkout(),
    )
    workdir = root / "work"
    workdir.mkdir()
    return Installed(bin_dir, workdir)


@pytest.fixture(scope="module")
def served(installed: Installed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(program=[str(installed.bin / "livedigit")], cwd=installed.workdir)
    server.start(tmp_path_factory.mktemp("served"))
    yield server
    server.stop()


def test_the_package_and_its_model_come_from_the_install(installed: Installed) -> None:
    done = installed.run(
        "python", "-c", "import livedigit, livedigit.config as c; print(livedigit.__file__); print(c.DEFAULT_MODEL)"
    )
    assert done.returncode == 0, done.stderr
    package, model = done.stdout.split()
    environment = installed.bin.parent.resolve()
    assert Path(package).resolve().is_relative_to(environment) and Path(model).resolve().is_relative_to(environment)
    assert Path(model).with_suffix(".tflite").is_file() and Path(model).with_suffix(".json").is_file()


def test_the_installed_server_serves_the_page_and_predicts(served: ServerProcess) -> None:
    page = httpx.get(served.http_url + "/", timeout=30)
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert httpx.get(served.http_url + "/static/app.js", timeout=30).status_code == 200
    reply = httpx.post(served.http_url + "/api/predict", json={"strokes": ONE}, timeout=30).json()
    assert reply["type"] == "prediction" and reply["digit"] == 1, reply
    card = httpx.get(served.http_url + "/api/model", timeout=30).json()
    assert card["name"] == "livedigit-cnn" and card["card"] is True


def test_the_installed_command_predicts_a_png(installed: Installed) -> None:
    Image.fromarray(drawing(64)).save(installed.workdir / "seven.png")
    done = installed.run("livedigit", "predict", "--json", "seven.png")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["file"] == "seven.png" and result["type"] == "prediction" and result["digit"] == 7, result


def test_the_training_script_is_not_installed(installed: Installed) -> None:
    done = installed.run("python", "-c", "import train")
    assert done.returncode != 0 and "ModuleNotFoundError: No module named 'train'" in done.stderr


@pytest.mark.skipif(
    preprocessing._compiled_draw is None and not os.environ.get("CI"),
    reason="no C compiler built livedigit/_draw.c here, so none builds it from the sdist either",
)
def test_the_sdist_builds_the_compiled_drawing(installed: Installed) -> None:
    done = installed.run("python", "-c", "import livedigit.preprocess as p; print(p._compiled_draw is not None)")
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr
