"""How `pip install .` builds: the project configured as scikit-build-core configures it (the
definitions of pyproject.toml, SKBUILD set), read back through CMake's file API.

A wheel's module must stay in its build tree: written next to the package sources, it replaced
the module `make` had built there. And the wheel's portable build (no -march=native) must carry
the AVX2 and AVX-512 kernels beside its SSE2 baseline: without them pip's module ran the CPU
forward 15x slower than make's (bench/results/cpu-dispatch-*.json)."""
import json
import os
import platform
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
pytestmark = pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not found")


def _pip_definitions():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    return dict(project["tool"]["scikit-build"]["cmake"]["define"])


@pytest.fixture(scope="module")
def codemodel(tmp_path_factory):
    build = tmp_path_factory.mktemp("skbuild")
    query = build / ".cmake" / "api" / "v1" / "query"
    query.mkdir(parents=True)
    (query / "codemodel-v2").touch()
    defines = _pip_definitions()
    defines.update(SKBUILD="2", PROXYATTN_CUDA="OFF",  # the CUDA backend changes none of this
                   CMAKE_BUILD_TYPE="Release", Python_EXECUTABLE=sys.executable)
    args = ["cmake", "-S", ROOT, "-B", str(build)] + [f"-D{k}={v}" for k, v in defines.items()]
    if shutil.which("ninja"):
        args += ["-G", "Ninja"]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    reply = build / ".cmake" / "api" / "v1" / "reply"
    index = json.loads(next(reply.glob("index-*.json")).read_text())
    model = json.loads((reply / index["reply"]["codemodel-v2"]["jsonFile"]).read_text())
    targets = {}
    for t in model["configurations"][0]["targets"]:
        targets[t["name"]] = json.loads((reply / t["jsonFile"]).read_text())
    return build, targets


def test_wheel_module_stays_in_the_build_tree(codemodel):
    build, targets = codemodel
    artifacts = [a["path"] for a in targets["_C"]["artifacts"]]
    assert artifacts, "the _C target has no artifact"
    for path in artifacts:
        full = os.path.normpath(os.path.join(build, path))  # relative paths are the build tree's
        assert full.startswith(str(build)), f"pip's build writes its module to {full}, outside its build tree"
        assert not full.startswith(os.path.join(ROOT, "python")), f"pip's build overwrites {full}"


def test_wheel_build_is_portable_with_every_kernel_variant(codemodel):
    _, targets = codemodel
    lib = targets["proxyattn"]
    flags = " ".join(f["fragment"] for group in lib.get("compileGroups", []) for f in group.get("compileCommandFragments", []))
    assert "-march=native" not in flags
    sources = {os.path.basename(s["path"]) for s in lib["sources"]}
    assert {"kernels.cpp", "kernels_dispatch.cpp"} <= sources
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert {"kernels_avx2.cpp", "kernels_avx512.cpp"} <= sources, sorted(sources)


def test_module_names_its_cpu_kernels():
    import proxyattn

    isa = proxyattn._C.cpu_kernels()
    assert isa in ("avx512", "avx2", "avx", "sse2", "neon", "generic"), isa
