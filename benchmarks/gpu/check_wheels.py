"""Check that the wheels in .whl/ plus what the GPU machine already has satisfy every wheel's requirements.

The wheels are for Python 3.12 and cannot be installed here, so this reads each wheel's METADATA: every
Requires-Dist that applies on Linux / CPython 3.12 without extras must name a carried wheel whose version fits
it, or a package the device image holds (its version checked where the device's pip list gave one). Also
refuses two versions of one package (they stop the whole install there). Exit 1 with the problems listed.

    python benchmarks/gpu/check_wheels.py [.whl]
"""

from __future__ import annotations

import re
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

# /work/.library/device/KINDS.md, "Python packages already there" (image 'cuda', read 2026-11-17) ...
DEVICE_PACKAGES = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers
flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py
markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging
pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham
simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
werkzeug wheel wrapt xarray xxhash yarl zipp""".split()
# ... and the versions its "pip list" row gives (Python 3.12.3).
DEVICE_VERSIONS = {"accelerate": "1.15.0", "huggingface-hub": "1.33.0", "numpy": "2.5.2", "safetensors": "0.8.0",
                   "sentence-transformers": "6.0.1", "sentencepiece": "0.2.2", "tokenizers": "0.23.2",
                   "torch": "2.11.0", "transformers": "5.17.0", "triton": "3.6.0"}
DEVICE_PYTHON = "3.12.3"


def wheel_name_version(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return canonicalize_name(name), version


def requirements(path: Path) -> list[Requirement]:
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        msg = Parser().parsestr(z.read(meta).decode("utf-8"))
    return [Requirement(r) for r in msg.get_all("Requires-Dist") or []]


def check(folder: Path) -> list[str]:
    env = default_environment()
    env.update(python_version="3.12", python_full_version=DEVICE_PYTHON, sys_platform="linux",
               platform_system="Linux", platform_machine="x86_64", implementation_name="cpython",
               platform_python_implementation="CPython", os_name="posix", extra="")
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        return [f"no wheels in {folder}"]
    problems: list[str] = []
    carried: dict[str, str] = {}
    for w in wheels:
        name, version = wheel_name_version(w)
        if name in carried:
            problems.append(f"two versions of {name}: {carried[name]} and {version}")
        carried[name] = version
    device = {canonicalize_name(n) for n in DEVICE_PACKAGES}
    for w in wheels:
        for req in requirements(w):
            if req.marker is not None and not req.marker.evaluate(env):
                continue  # an extra, another platform or Python
            name = canonicalize_name(req.name)
            who = f"{w.name}: needs {req}"
            if name in carried:
                if not req.specifier.contains(Version(carried[name]), prereleases=True):
                    problems.append(f"{who}, carried {carried[name]}")
            elif name in device:
                have = DEVICE_VERSIONS.get(name)
                if have is not None and not req.specifier.contains(Version(have), prereleases=True):
                    problems.append(f"{who}, the device has {have}: carry a wheel of it")
            else:
                problems.append(f"{who}: neither carried nor on the device")
    return problems


def main(argv: list[str]) -> int:
    folder = Path(argv[0] if argv else ".whl")
    problems = check(folder)
    for p in problems:
        print(f"  wheel check: {p}")
    if problems:
        return 1
    n = len(list(folder.glob("*.whl")))
    print(f"wheel check: the {n} wheels' requirements are met by each other and the device's packages")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
