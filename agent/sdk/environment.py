"""What the code ran on: interpreter, packages, OS, container, GPU stack, frameworks.

Every probe reads what is already there and never imports a framework:
torch, jax and tensorflow are looked at only when the training script has
imported them (`sys.modules`), otherwise only their installed versions are
read from package metadata. Each probe degrades to None/empty; none raises.

Sources:
- packages: `importlib.metadata` over sys.path (or the given paths);
- OS: `platform.platform()`, the kernel from `uname`, the distribution from
  `/etc/os-release`;
- container: image from `TRAINTRAIL_CONTAINER_IMAGE`, `CONTAINER_IMAGE`,
  `IMAGE_DIGEST` (set them from your build or the downward API), Podman's
  `/run/.containerenv`, Apptainer/Singularity's `APPTAINER_CONTAINER`; the
  container id from `/proc/self/cgroup` and `/proc/self/mountinfo` (Docker,
  containerd, CRI-O, Podman); `/.dockerenv` says "in Docker" without an id;
- GPU stack: the driver from `/proc/driver/nvidia/version`, GPU models from
  `nvidia-smi` (bounded), CUDA runtime and cuDNN from an imported torch or
  tensorflow, else the `CUDA_VERSION`/`CUDNN_VERSION` of NVIDIA's images.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from agent.sdk.code import run_bounded

__all__ = [
    "FRAMEWORKS",
    "container_info",
    "deterministic_flags",
    "frameworks",
    "gpu_info",
    "installed_packages",
    "os_info",
    "python_info",
]

FRAMEWORKS = ("torch", "jax", "jaxlib", "tensorflow", "keras")
NVIDIA_SMI_TIMEOUT_S = 5.0
_CONTAINER_ID = re.compile(
    r"(?:docker|cri-containerd|crio|containerd|libpod|podman)[-/:]([0-9a-f]{64})"
    r"|/containers/([0-9a-f]{64})/"
    r"|kubepods[^\n]*?[/-]([0-9a-f]{64})(?:\.scope)?$",
    re.MULTILINE,
)
_DRIVER = re.compile(r"Kernel Module(?: for [\w-]+)?\s+([0-9][0-9.]*)")


def python_info() -> dict[str, str]:
    """version, implementation and executable of the running interpreter."""
    return {
        "version": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": sys.executable or "",
    }


def installed_packages(path: list[str] | None = None) -> dict[str, str]:
    """name → version of every distribution on `path` (default sys.path), sorted;
    the first found wins, as for imports."""
    import importlib.metadata  # slow to import (email, zipfile): only the worker needs it

    found: dict[str, str] = {}
    try:
        dists = (
            importlib.metadata.distributions()
            if path is None
            else importlib.metadata.distributions(path=path)
        )
        for dist in dists:
            try:
                name = dist.metadata["Name"]
                version = dist.version
            except Exception:  # noqa: S112 - a broken dist-info must not hide the others
                continue
            if name and name not in found:
                found[str(name)] = str(version or "")
    except Exception:  # noqa: S110 - an unreadable sys.path entry ends the scan, not the run
        pass
    return dict(sorted(found.items(), key=lambda kv: kv[0].lower()))


def os_info() -> dict[str, str]:
    """os (platform string), kernel (`uname -srvm`) and distro (os-release PRETTY_NAME)."""
    try:
        os_name = platform.platform()
    except Exception:
        os_name = sys.platform
    try:
        u = platform.uname()
        kernel = " ".join(p for p in (u.system, u.release, u.version, u.machine) if p)
    except Exception:
        kernel = ""
    try:
        distro = platform.freedesktop_os_release().get("PRETTY_NAME", "")
    except (OSError, AttributeError):
        distro = ""
    return {"os": os_name, "kernel": kernel, "distro": distro}


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def container_info(environ: dict[str, str] | None = None) -> dict[str, str | None]:
    """container_image (name and/or digest) and container_id; None outside a container."""
    env = os.environ if environ is None else environ
    image: str | None = None
    for name in ("TRAINTRAIL_CONTAINER_IMAGE", "CONTAINER_IMAGE", "IMAGE_DIGEST", "IMAGE"):
        if env.get(name):
            image = env[name]
            break
    containerenv = _read("/run/.containerenv")  # Podman: image="...", imageid="..."
    if image is None and containerenv:
        fields = dict(re.findall(r'^(\w+)="(.*)"$', containerenv, re.MULTILINE))
        name, digest = fields.get("image", ""), fields.get("imageid", "")
        image = "@sha256:".join(p for p in (name, digest) if p) or None
    if image is None:
        image = env.get("APPTAINER_CONTAINER") or env.get("SINGULARITY_CONTAINER") or None
    cid: str | None = None
    for source in ("/proc/self/cgroup", "/proc/self/mountinfo"):
        match = _CONTAINER_ID.search(_read(source))
        if match:
            cid = next(g for g in match.groups() if g)
            break
    if cid is None and image is None and Path("/.dockerenv").exists():
        cid = "docker"
    return {"container_image": image, "container_id": cid}


def gpu_info() -> dict[str, Any]:
    """cuda_driver, cuda_runtime, cudnn (strings or None) and gpus (`index: name, uuid`)."""
    info: dict[str, Any] = {"cuda_driver": None, "cuda_runtime": None, "cudnn": None, "gpus": []}
    match = _DRIVER.search(_read("/proc/driver/nvidia/version"))
    if match:
        info["cuda_driver"] = match.group(1)
    smi = shutil.which("nvidia-smi")
    if smi:
        query = "--query-gpu=index,name,uuid,driver_version"
        out = run_bounded([smi, query, "--format=csv,noheader"], None, NVIDIA_SMI_TIMEOUT_S)
        for line in (out or b"").decode("utf-8", "replace").splitlines():
            cells = [c.strip() for c in line.split(",")]
            if len(cells) == 4:
                info["gpus"].append(f"{cells[0]}: {cells[1]}, {cells[2]}")
                info["cuda_driver"] = info["cuda_driver"] or cells[3]
    torch = sys.modules.get("torch")
    if torch is not None:
        info["cuda_runtime"] = _safe(lambda: torch.version.cuda)
        info["cudnn"] = _safe(lambda: torch.backends.cudnn.version())
    tf = sys.modules.get("tensorflow")
    if tf is not None and info["cuda_runtime"] is None:
        build = _safe(lambda: dict(tf.sysconfig.get_build_info()))
        if isinstance(build, dict):
            info["cuda_runtime"] = build.get("cuda_version")
            info["cudnn"] = build.get("cudnn_version")
    info["cuda_runtime"] = _str(info["cuda_runtime"]) or os.environ.get("CUDA_VERSION") or None
    info["cudnn"] = (
        _str(info["cudnn"])
        or os.environ.get("CUDNN_VERSION")
        or os.environ.get("NV_CUDNN_VERSION")
        or None
    )
    return info


def frameworks() -> dict[str, str]:
    """Installed versions of torch, jax, jaxlib, tensorflow, keras; the running
    module's `__version__` where the script imported it (it may differ)."""
    import importlib.metadata

    found: dict[str, str] = {}
    for name in FRAMEWORKS:
        module = sys.modules.get(name)
        version = _str(getattr(module, "__version__", None)) if module is not None else None
        if version is None:
            try:
                version = importlib.metadata.version(name)
            except Exception:  # noqa: S112 - not installed
                continue
        found[name] = version
    return found


_DETERMINISM_ENV = (
    "PYTHONHASHSEED", "CUBLAS_WORKSPACE_CONFIG", "CUDA_LAUNCH_BLOCKING", "TF_DETERMINISTIC_OPS",
    "TF_CUDNN_DETERMINISTIC", "XLA_FLAGS", "NVIDIA_TF32_OVERRIDE",
    "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE",
)  # fmt: skip


def deterministic_flags() -> dict[str, str]:
    """The determinism switches in effect: environment variables, and the flags of
    the frameworks the script imported (read, never set)."""
    flags = {f"env.{k}": os.environ[k] for k in _DETERMINISM_ENV if k in os.environ}
    torch = sys.modules.get("torch")
    if torch is not None:
        probes = {
            "torch.deterministic_algorithms": lambda: torch.are_deterministic_algorithms_enabled(),
            "torch.deterministic_algorithms_warn_only": (
                lambda: torch.is_deterministic_algorithms_warn_only_enabled()
            ),
            "torch.backends.cudnn.deterministic": lambda: torch.backends.cudnn.deterministic,
            "torch.backends.cudnn.benchmark": lambda: torch.backends.cudnn.benchmark,
            "torch.backends.cudnn.allow_tf32": lambda: torch.backends.cudnn.allow_tf32,
            "torch.backends.cuda.matmul.allow_tf32": (
                lambda: torch.backends.cuda.matmul.allow_tf32
            ),
            "torch.initial_seed": lambda: torch.initial_seed(),
        }
        for key, probe in probes.items():
            value = _str(_safe(probe))
            if value is not None:
                flags[key] = value
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        value = _str(_safe(lambda: tf.config.experimental.is_op_determinism_enabled()))
        if value is not None:
            flags["tensorflow.op_determinism"] = value
    jax = sys.modules.get("jax")
    if jax is not None:
        for option in ("jax_enable_x64", "jax_default_prng_impl", "jax_threefry_partitionable"):
            value = _str(_safe(lambda option=option: getattr(jax.config, option)))
            if value is not None:
                flags[f"jax.{option}"] = value
    return dict(sorted(flags.items()))


def _safe(probe: Any) -> Any:
    try:
        return probe()
    except Exception:
        return None


def _str(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
