"""Secrets never leave the training process: redaction of env, argv and config values.

The RunStarted snapshot records every environment variable, because "which
NCCL/CUDA/thread settings did it run with" is an audit question. Tokens, keys
and passwords live in the same environment, so each variable is judged by
its name and by its value:

- a name on the allow-list (PATH, HOME, LANG, CUDA_VISIBLE_DEVICES, SLURM_*,
  ...) keeps its value unless the value itself looks secret;
- any other name that looks secret (TOKEN, SECRET, PASSWORD, KEY, AUTH,
  COOKIE, SESSION, PRIVATE, CREDENTIAL, ...) is recorded as `<redacted>`;
- a value that looks secret is `<redacted>` whatever its name: known token
  shapes (GitHub, Slack, AWS, OpenAI/Anthropic, Hugging Face, GitLab, Google,
  Stripe, npm, PyPI), JWTs, PEM blocks, URLs with a password, `password=...`
  pairs, and long high-entropy base64/hex runs;
- a kept value has the user part of any URL removed.

A false positive costs a redacted harmless value; a false negative leaks a
credential into an audit store many people read, so the rules err wide.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence

__all__ = [
    "REDACTED",
    "looks_secret_key",
    "looks_secret_name",
    "looks_secret_value",
    "redact_argv",
    "redact_config",
    "redact_env",
    "redact_value",
    "strip_url_credentials",
]

REDACTED = "<redacted>"
MAX_VALUE_CHARS = 4096
"""Longer values are cut (exported shell functions, huge flag lists)."""

_ALLOW_NAMES = frozenset(
    [
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TERM", "PWD",
    "OLDPWD", "HOSTNAME", "SHLVL", "TMPDIR", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_DRIVER_CAPABILITIES", "CUDA_HOME", "CUDA_PATH", "CUDA_VERSION", "CUDNN_VERSION",
    "NV_CUDNN_VERSION", "NCCL_VERSION", "CUDA_LAUNCH_BLOCKING", "CUBLAS_WORKSPACE_CONFIG",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
    "PYTHONHASHSEED", "PYTHONPATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE",
    "VIRTUAL_ENV", "CONDA_PREFIX", "CONDA_DEFAULT_ENV", "LD_LIBRARY_PATH", "XLA_FLAGS", "RANK",
    "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
    "ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "PMI_RANK",
    "PMI_SIZE", "PMIX_RANK", "PMIX_NAMESPACE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS",
    "JOB_COMPLETION_INDEX", "POD_NAME", "POD_NAMESPACE", "POD_UID", "POD_IP", "NODE_NAME",
    "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "TOKENIZERS_PARALLELISM", "HF_HOME",
    "TORCH_HOME", "TRANSFORMERS_CACHE", "HF_DATASETS_CACHE",
    ]
)  # fmt: skip
_ALLOW_PREFIXES = (
    "LC_", "SLURM_", "TORCHELASTIC_", "OMPI_COMM_WORLD_", "NCCL_", "TF_", "JAX_", "TRAINTRAIL_"
)  # fmt: skip

_SECRET_NAME = re.compile(
    r"TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|COOKIE|SESSION|PRIVATE|APIKEY"
    r"|ACCESSKEY|AUTH|SIGNATURE|SALT|(?:^|_)(?:KEY|KEYS|PASS|PWD|PW|CREDS?|DSN)(?:_|$)",
    re.IGNORECASE,
)
_SECRET_VALUE = re.compile(
    r"gh[pousr]_[A-Za-z0-9]{30,}"  # GitHub classic tokens
    r"|github_pat_[A-Za-z0-9_]{20,}"  # GitHub fine-grained
    r"|glpat-[A-Za-z0-9_-]{20,}"  # GitLab
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"  # Slack
    r"|hooks\.slack\.com/services/"  # Slack webhook
    r"|(?:AKIA|ASIA|AGPA|AIDA|AROA)[A-Z0-9]{16}"  # AWS access key ids
    r"|sk-[A-Za-z0-9_-]{20,}"  # OpenAI, Anthropic (sk-ant-...), DeepSeek, ...
    r"|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}"  # Stripe
    r"|hf_[A-Za-z0-9]{30,}"  # Hugging Face
    r"|AIza[0-9A-Za-z_-]{35}"  # Google API keys
    r"|npm_[A-Za-z0-9]{36}"  # npm
    r"|pypi-[A-Za-z0-9_-]{50,}"  # PyPI upload tokens
    r"|SG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}"  # SendGrid
    r"|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"  # JWT (header.payload[.signature])
    r"|-----BEGIN[A-Z ]*-----"  # PEM blocks: keys and certificates
    r"|[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:[^/\s@]+@"  # scheme://user:password@host
    r"|(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|accountkey"
    r"|sharedaccesskey|client[_-]?secret)\s*[=:]\s*[^\s;&]+",  # key=value inside a value
    re.IGNORECASE,
)
_SECRET_KEY = re.compile(
    r"(?:^|[_.-])(?:token|secret|password|passwd|pwd|api[_-]?key|access[_-]?key|secret[_-]?key"
    r"|private[_-]?key|credentials?|auth|cookie|dsn)$",
    re.IGNORECASE,
)
_URL_USER = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]+@")
_RUN = re.compile(r"[A-Za-z0-9+/=_-]{32,}")
_HEX = re.compile(r"[0-9a-fA-F]{32,}")


def looks_secret_name(name: str) -> bool:
    """True when a variable/flag/config-key name says it holds a credential."""
    return bool(_SECRET_NAME.search(name.replace("-", "_")))


def looks_secret_key(key: str) -> bool:
    """Stricter than `looks_secret_name`, for config keys and command-line flags, where
    `tokenizer` or `max_tokens` are ordinary: the key must end in a secret word."""
    return bool(_SECRET_KEY.search(key.strip("-")))


def looks_secret_value(value: str, entropy: bool = True) -> bool:
    """True when a value has the shape of a credential (see the module docstring).

    `entropy=False` leaves out the long-random-token rule, for config values and
    arguments, where content hashes and ids are expected and must stay readable.
    """
    if _SECRET_VALUE.search(value):
        return True
    return entropy and any(_high_entropy(m.group()) for m in _RUN.finditer(value))


def _high_entropy(run: str) -> bool:
    """A long random-looking token: hex of >= 32 digits, or base64 with high entropy.
    Paths (`/usr/...`, several slashes) and plain words are not."""
    if _HEX.fullmatch(run):
        return len(set(run.lower())) >= 10
    if run.startswith("/") or run.count("/") > 2:
        return False
    if not (any(c.isdigit() for c in run) and any(c.isalpha() for c in run)):
        return False
    counts = Counter(run)
    entropy = -sum(n / len(run) * math.log2(n / len(run)) for n in counts.values())
    return entropy >= 4.0


def strip_url_credentials(value: str) -> str:
    """Every `scheme://user[:password]@` in `value` becomes `scheme://`."""
    return _URL_USER.sub(r"\g<scheme>", value)


def redact_value(value: str, entropy: bool = True) -> str:
    """`<redacted>` for a secret-looking value, else the value with URL users removed."""
    if looks_secret_value(value, entropy):
        return REDACTED
    return strip_url_credentials(value)


def allowed_name(name: str) -> bool:
    """On the allow-list: harmless by name (its value is still checked)."""
    return name in _ALLOW_NAMES or name.startswith(_ALLOW_PREFIXES)


def redact_env(environ: Mapping[str, str]) -> dict[str, str]:
    """Every variable, sorted by name, its value kept or `<redacted>` by the rules above."""
    out: dict[str, str] = {}
    for name in sorted(environ):
        value = str(environ[name])
        if not allowed_name(name) and looks_secret_name(name):
            out[name] = REDACTED
        else:
            value = redact_value(value)
            if len(value) > MAX_VALUE_CHARS:
                value = value[:MAX_VALUE_CHARS] + "...(truncated)"
            out[name] = value
    return out


def redact_argv(argv: Sequence[str]) -> list[str]:
    """argv with secret values redacted: `--token X`, `--api-key=X`, and secret shapes."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next and not arg.startswith("-"):
            out.append(REDACTED)
            hide_next = False
            continue
        hide_next = False
        flag, eq, _value = arg.partition("=")
        if arg.startswith("-") and looks_secret_key(flag):
            if eq:
                out.append(f"{flag}={REDACTED}")
            else:
                out.append(arg)
                hide_next = True
            continue
        out.append(redact_value(arg, entropy=False))
    return out


def redact_config(flat: Mapping[str, str]) -> dict[str, str]:
    """Flattened config (JSON-encoded values) with secret keys and values redacted."""
    hidden = json.dumps(REDACTED)
    out: dict[str, str] = {}
    for key, value in flat.items():
        if looks_secret_key(key.rsplit(".", 1)[-1]) or looks_secret_value(value, False):
            out[key] = hidden
        else:
            out[key] = strip_url_credentials(value)
    return out
