"""The RunStarted context snapshot, each part on real inputs.

A real git repository (clean, dirty, renamed, untracked), a real venv's
distributions, real secret shapes that must never leave the process, and real
processes with torchrun/Slurm/MPI rank variables against the unix-socket agent
stand-in, ending in the collector's tables and queries.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

import agent.sdk as traintrail
from agent.sdk import environment, redact, scheduler
from agent.sdk.code import git_state, script_info
from agent.sdk.context import snapshot
from schemas import decode, default_registry, encode
from tests import samples
from tests.test_agent import test_sdk as _sdk
from tests.test_agent.test_sdk import REPO, AgentStandIn, wait_for

agent, sock_dir, spool_dir = _sdk.agent, _sdk.sock_dir, _sdk.spool_dir  # the same fixtures


def _encodes(body: dict[str, Any]) -> dict[str, Any]:
    """The body as the agent would encode it, decoded back."""
    reg = default_registry()
    data = encode(reg, "RunStarted", {**body, "envelope": samples.envelope()})
    return decode(reg, data).record


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def tmp_path_empty(repo: Path) -> Path:
    empty = repo.parent / "empty"
    empty.mkdir(exist_ok=True)
    return empty


def _diff_sha(repo: Path) -> str:
    out = subprocess.run(["git", "diff", "--binary", "HEAD"], cwd=repo, capture_output=True)
    return hashlib.sha256(out.stdout).hexdigest()


# -- code ---------------------------------------------------------------------------------


class TestGit:
    @pytest.fixture
    def repo(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
        if shutil.which("git") is None:
            pytest.skip("git not installed")
        monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
        repo = tmp_path / "repo"
        repo.mkdir()
        _git(repo, "init", "-q", "-b", "main")
        _git(repo, "config", "user.email", "t@example.com")
        _git(repo, "config", "user.name", "t")
        (repo / "train.py").write_text("print('train')\n")
        (repo / "model.py").write_text("LAYERS = 4\n")
        (repo / ".gitignore").write_text("*.ckpt\n")
        _git(repo, "add", ".")
        _git(repo, "commit", "-q", "-m", "init")
        _git(
            repo,
            "remote",
            "add",
            "origin",
            "https://user:ghp_abcdefghijklmnopqrstuvwxyz0123456789@github.com/x/y.git",
        )
        return repo

    def test_clean_repo(self, repo: Path) -> None:
        state = git_state(str(repo))
        assert state["commit"] == _git(repo, "rev-parse", "HEAD")
        assert state["branch"] == "main" and state["dirty"] is False
        assert state["remote"] == "https://github.com/x/y.git"
        assert state["diff_sha256"] == hashlib.sha256(b"").hexdigest()
        assert state["changed_files"] == [] and state["untracked_files"] == []
        (repo / "big.ckpt").write_bytes(b"ignored")
        assert git_state(str(repo)) == state  # ignored files change nothing

    def test_dirty_repo_diff_hash_follows_content(self, repo: Path) -> None:
        (repo / "model.py").write_text("LAYERS = 8\n")
        first = git_state(str(repo))
        assert first["dirty"] is True and first["changed_files"] == ["model.py"]
        assert first["diff_sha256"] == _diff_sha(repo)  # what an auditor recomputes
        (repo / "model.py").write_text("LAYERS = 16\n")
        second = git_state(str(repo))
        assert second["diff_sha256"] not in (first["diff_sha256"], None)
        (repo / "model.py").write_text("LAYERS = 8\n")
        assert git_state(str(repo))["diff_sha256"] == first["diff_sha256"]
        _git(repo, "add", "model.py")  # staged changes count the same
        assert git_state(str(repo))["diff_sha256"] == first["diff_sha256"]

    def test_changed_untracked_and_renamed(self, repo: Path) -> None:
        (repo / "notes.txt").write_text("n")
        (repo / "data").mkdir()
        (repo / "data" / "a.csv").write_text("1")
        _git(repo, "mv", "train.py", "main.py")
        (repo / "sp ace.py").write_text("x")
        state = git_state(str(repo))
        assert state["dirty"] is True
        assert state["changed_files"] == ["main.py"]  # the new name of the rename
        assert state["untracked_files"] == ["data/", "notes.txt", "sp ace.py"]
        assert state["diff_sha256"] == _diff_sha(repo)

    def test_script_hash_and_snapshot_through_the_sdk(
        self, repo: Path, agent: AgentStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        script = repo / "train.py"
        info = script_info(["train.py"], str(repo))
        assert info == {
            "script_path": str(script),
            "script_sha256": hashlib.sha256(script.read_bytes()).hexdigest(),
        }
        assert script_info(["-c"], str(tmp_path_empty(repo)))["script_path"] != str(script)
        (repo / "model.py").write_text("LAYERS = 2\n")
        monkeypatch.chdir(repo)
        monkeypatch.setattr(sys, "argv", ["train.py", "--lr", "0.1"])
        with traintrail.start_run("p", "git", socket_path=agent.path):
            pass
        (started,) = agent.events("RunStarted")
        body = started["body"]
        assert body["script_path"] == str(script) and body["script_sha256"] == info["script_sha256"]
        assert body["git"]["changed_files"] == ["model.py"]
        assert body["git"]["remote"] == "https://github.com/x/y.git"
        assert "ghp_" not in json.dumps(body)
        assert _encodes(body)["git"]["diff_sha256"] == _diff_sha(repo)


# -- environment --------------------------------------------------------------------------


def test_real_venv_distributions(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    pip_version = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print(m.version('pip'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    code = (
        "import json, sys; from agent.sdk.environment import installed_packages, python_info; "
        "print(json.dumps([installed_packages(), python_info()]))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [python, "-c", code], capture_output=True, text=True, check=True, env=env, cwd=tmp_path
    )
    packages, python_info = json.loads(out.stdout)
    assert packages.get("pip") == pip_version
    assert "pytest" not in packages and "fastavro" not in packages  # only the venv's own
    assert python_info["executable"] == str(python)
    # the same listing in-process, by path
    (site,) = venv.glob("lib/python*/site-packages")
    packages.pop("traintrail", None)  # PYTHONPATH=REPO shows its egg-info too
    assert environment.installed_packages([str(site)]) == packages


def test_os_container_gpu_and_frameworks_without_importing_them(tmp_path: Path) -> None:
    info = environment.os_info()
    assert platform.release() in info["kernel"] and info["os"]
    assert (
        environment.container_info({"CONTAINER_IMAGE": "ghcr.io/x/y@sha256:" + "a" * 64})[
            "container_image"
        ]
        == "ghcr.io/x/y@sha256:" + "a" * 64
    )
    gpu = environment.gpu_info()
    assert set(gpu) == {"cuda_driver", "cuda_runtime", "cudnn", "gpus"}
    if Path("/proc/driver/nvidia/version").exists():
        assert gpu["cuda_driver"]
    code = (
        "import json, sys; from agent.sdk.context import snapshot; "
        "b = snapshot(run_id='r', project='p', name='n', config={}, argv=[], cwd='.', pid=1); "
        "print(json.dumps([b['frameworks'], sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('torch', 'jax', 'tensorflow'))]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    frameworks, imported = json.loads(out.stdout)
    assert imported == []  # versions read from metadata, nothing imported
    for name in environment.FRAMEWORKS:
        try:
            expected: str | None = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            expected = None
        assert frameworks.get(name) == expected


def test_seeds_and_deterministic_flags(
    agent: AgentStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    seeds = {"torch": 0, "numpy": 42, "data": 2**40}
    with traintrail.start_run("p", seeds=seeds, socket_path=agent.path):
        pass
    body = agent.events("RunStarted")[0]["body"]
    assert body["seeds"] == seeds
    assert body["deterministic"]["env.CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert body["deterministic"]["env.PYTHONHASHSEED"] == "0"
    assert _encodes(body)["seeds"] == seeds
    for bad, error in (({"x": 1.5}, TypeError), ({"x": True}, TypeError), ({1: 1}, TypeError),
                       ({"x": 2**64}, ValueError), ([1], TypeError)):  # fmt: skip
        with pytest.raises(error):
            traintrail.start_run("p", seeds=bad, socket_path=agent.path)  # type: ignore[arg-type]


# -- secrets ------------------------------------------------------------------------------

SECRETS = [
    "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8",
    "gho_" + "Zz9Yy8Xx7Ww6Vv5Uu4Tt3Ss2Rr1Qq0Pp9Oo8",
    "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUV",
    "glpat-" + "xY3zW9vU7tS5rQ1pO8nM",
    "xoxb-" + "123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    "xoxp-" + "123456789012-123456789012-123456789012-abcdef0123456789abcdef0123456789",
    "AKIA" + "IOSFODNN7EXAMPLE",
    AWS_SECRET := "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",  # by entropy
    "sk-" + "proj-Ab12Cd34Ef56Gh78Ij90Kl12Mn34Op56Qr78St90",
    "sk-ant-" + "api03-Ab12Cd34Ef56Gh78Ij90Kl12Mn34Op56Qr78St90UvWx",
    "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
    "AIza" + "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q",
    "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc",
    "npm_" + "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",  # JWT
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU=\n"
    "-----END OPENSSH PRIVATE KEY-----",
    "postgres://admin:Sup3rS3cretPw@db.internal:5432/prod",
    HEX_KEY := "3f6c2a9be1d04c7f8a5b6e2d9c1f0a7b4e3d2c1b",  # 40-hex (W&B-style), by entropy
    B64_KEY := "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFiY2RlZmdoaWprbG1ub3A",  # by entropy
    "DefaultEndpointsProtocol=https;AccountName=x;AccountKey=q1w2e3r4t5y6u7i8o9p0==",
]


@pytest.mark.parametrize("secret", SECRETS, ids=range(len(SECRETS)))
def test_secret_shapes_never_leave_the_process(secret: str) -> None:
    """In the environment every shape is caught by its value. In argv and config,
    where content hashes and ids are legitimate, a random-looking token is caught
    by its flag/key name only (`--hf-token X`, `*.api_key`), known shapes anywhere."""
    by_entropy = secret in (AWS_SECRET, HEX_KEY, B64_KEY)
    arg = "--api-key" if by_entropy else "--data"
    key = "x.secret" if by_entropy else "x"
    environ = {
        "INNOCENT_LOOKING": secret,  # caught by its value
        "MY_API_TOKEN": "short",  # caught by its name
        "PIP_INDEX_URL": "https://pypi.org/simple",
        "LANG": "en_US.UTF-8",
        "CUDA_VISIBLE_DEVICES": "0,1",
        "PATH": "/usr/local/bin:/usr/bin:/home/u/.local/lib/python3.11/site-packages/bin",
        "RUN_UUID": str(uuid.UUID(int=7)),
    }
    body = snapshot(
        run_id="r", project="p", name="n", pid=1, cwd=".", environ=environ,
        argv=["train.py", "--hf-token", secret, f"{arg}={secret}", "--max-tokens", "512"],
        config={"model.tokenizer": '"gpt2"', "wandb.api_key": '"abc"', key: json.dumps(secret)},
        scheduler={"MASTER_ADDR": secret},
    )  # fmt: skip
    text = json.dumps(body)
    for part in (secret, *secret.split("\n"), "Sup3rS3cretPw", "short"):
        if len(part) >= 5 and not part.startswith("-----"):
            assert part not in text
    env = body["env"]
    assert env["INNOCENT_LOOKING"] == env["MY_API_TOKEN"] == redact.REDACTED
    assert env["PIP_INDEX_URL"] == "https://pypi.org/simple" and env["LANG"] == "en_US.UTF-8"
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1" and env["PATH"] == environ["PATH"]
    assert env["RUN_UUID"] == environ["RUN_UUID"]
    assert body["command"][-2:] == ["--max-tokens", "512"]
    assert body["config"]["model.tokenizer"] == '"gpt2"'
    assert body["config"]["wandb.api_key"] == json.dumps(redact.REDACTED)
    _encodes(body)


def test_url_users_are_stripped_from_kept_values() -> None:
    assert redact.redact_env({"GIT_URL": "https://oauth2@gitlab.com/x.git"}) == {
        "GIT_URL": "https://gitlab.com/x.git"
    }
    assert redact.redact_env({"DATABASE_URL": "mysql://u:p4ss@h/db"})["DATABASE_URL"] == (
        redact.REDACTED
    )


def test_secrets_from_the_real_environment_stay_out(
    agent: AgentStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i, secret in enumerate(SECRETS):
        monkeypatch.setenv(f"HARMLESS_{i}", secret)
    monkeypatch.setenv("HF_TOKEN", "plainvalue")
    with traintrail.start_run("p", socket_path=agent.path, config={"token": SECRETS[0]}):
        pass
    body = agent.events("RunStarted")[0]["body"]
    text = json.dumps(body)
    assert not [s for s in SECRETS if s.split("\n")[0] in text and not s.startswith("-----")]
    assert "plainvalue" not in text and body["env"]["HF_TOKEN"] == redact.REDACTED
    assert body["env"]["HOME"] == os.environ["HOME"]
    _encodes(body)


# -- scheduler ----------------------------------------------------------------------------


def test_slurm_mpi_and_kubernetes_placement() -> None:
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_PROCID": "3", "SLURM_NTASKS": "8",
             "SLURM_LOCALID": "1", "SLURM_STEP_ID": "0", "SLURM_CLUSTER_NAME": "c1"}  # fmt: skip
    p = scheduler.placement(slurm)
    assert (p.rank, p.world_size, p.local_rank, p.launcher) == (3, 8, 1, "slurm")
    assert p.variables["SLURM_JOB_ID"] == "4242" and p.variables["job_key_source"] == "SLURM_JOB_ID"
    assert scheduler.placement({**slurm, "SLURM_PROCID": "0"}).job_key == p.job_key
    other_step = scheduler.placement({**slurm, "SLURM_STEP_ID": "1"})
    assert other_step.job_key != p.job_key
    array = {**slurm, "SLURM_ARRAY_JOB_ID": "4240", "SLURM_ARRAY_TASK_ID": "2"}
    assert scheduler.placement(array).job_key != p.job_key
    # torchrun under Slurm (one torchrun per node): RANK is the worker's, not SLURM_PROCID
    both = {**slurm, "SLURM_PROCID": "1", "SLURM_NTASKS": "2", "RANK": "5", "WORLD_SIZE": "16",
            "MASTER_ADDR": "n1", "TORCHELASTIC_RUN_ID": "none"}  # fmt: skip
    p2 = scheduler.placement(both)
    assert (p2.rank, p2.world_size, p2.launcher) == (5, 16, "torchrun")
    assert p2.job_key is not None and p2.job_key.startswith("slurm:")

    ompi = {"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "4",
            "OMPI_COMM_WORLD_LOCAL_RANK": "0", "PMIX_NAMESPACE": "prterun-h-77@1"}  # fmt: skip
    p3 = scheduler.placement(ompi)
    assert (p3.rank, p3.world_size, p3.launcher) == (2, 4, "mpi")
    assert p3.job_key == "mpi:prterun-h-77@1"
    p4 = scheduler.placement({"PMI_RANK": "1", "PMI_SIZE": "2", "TRAINTRAIL_JOB_ID": "j-9"})
    assert (p4.rank, p4.world_size, p4.job_key) == (1, 2, "j-9")
    k8s = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "RANK": "1", "WORLD_SIZE": "2",
           "JOB_UID": "a1b2", "POD_NAME": "train-worker-0"}  # fmt: skip
    p5 = scheduler.placement(k8s)
    assert p5.job_key == "k8s:a1b2" and p5.variables["POD_NAME"] == "train-worker-0"
    assert scheduler.placement({}) == scheduler.Placement()
    assert scheduler.placement({"RANK": "x", "WORLD_SIZE": ""}).world_size == 1


RANK_SCRIPT = """
import sys, agent.sdk as tt
run = tt.start_run("p", "ddp", socket_path=sys.argv[1], seeds={"torch": 7})
run.log({"loss": 1.0})
run.finish()
"""


def _ranks(agent: AgentStandIn, extra: dict[str, str]) -> None:
    procs = []
    for rank in (0, 1):
        env = {k: v for k, v in os.environ.items()
               if k not in scheduler.SCHEDULER_VARS}  # fmt: skip
        env.update(extra, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                   LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="29500")  # fmt: skip
        cmd = [sys.executable, "-c", RANK_SCRIPT, agent.path]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err


@pytest.mark.parametrize("elastic_id", [str(uuid.uuid4()), "none"])
def test_torchrun_ranks_join_one_run(agent: AgentStandIn, elastic_id: str) -> None:
    _ranks(agent, {"TORCHELASTIC_RUN_ID": elastic_id, "TORCHELASTIC_RESTART_COUNT": "0"})
    assert wait_for(lambda: len(agent.events("RunStarted")) == 2)
    started = {e["body"]["rank"]: e for e in agent.events("RunStarted")}
    owner, rank1 = started[0], started[1]
    run_id = owner["body"]["run_id"]
    assert rank1["body"]["run_id"] == run_id  # one run, agreed without talking
    if elastic_id != "none":
        key = f"torchelastic:{elastic_id}:0"
        assert run_id == scheduler.derive_run_id(key, "p", "ddp", 0)
    else:  # single node, no rendezvous id: both are children of this process
        assert owner["body"]["scheduler"]["job_key_source"] == "parent"
    assert owner["stream"] == f"run/{run_id}" and not owner["body"]["attached"]
    assert rank1["stream"] == f"run/{run_id}/rank1" and rank1["body"]["attached"]
    assert owner["body"]["pid"] != rank1["body"]["pid"]
    assert owner["body"]["world_size"] == rank1["body"]["world_size"] == 2
    assert rank1["body"]["scheduler"]["RANK"] == "1" and rank1["body"]["seeds"] == {"torch": 7}
    (finished,) = agent.events("RunFinished")  # rank 0 only
    assert finished["stream"] == f"run/{run_id}"
    streams = {e["stream"] for e in agent.events("Metrics")}
    assert streams == {f"run/{run_id}", f"run/{run_id}/rank1"}
    for e in agent.events("RunStarted"):
        _encodes(e["body"])


def test_distributed_without_job_id_records_separate_runs(
    agent: AgentStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in scheduler.SCHEDULER_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")  # ranks on several nodes, nothing shared
    with traintrail.start_run("p", socket_path=agent.path) as run:
        pass
    assert run.rank == 1 and not run.attached
    (started,) = agent.events("RunStarted")
    assert started["stream"] == f"run/{run.run_id}" and started["body"]["attached"] is False
    assert len(agent.events("RunFinished")) == 1


def test_given_run_id_in_a_job_attaches_ranks(
    agent: AgentStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in scheduler.SCHEDULER_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "3")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    with traintrail.start_run("p", run_id="job-7", socket_path=agent.path) as run:
        run.log({"x": 1.0})
    assert run.attached and run.rank == 3
    assert {e["stream"] for e in agent.events()} == {"run/job-7/rank3"}
    assert not agent.events("RunFinished")


# -- storage ------------------------------------------------------------------------------


def test_v1_resolves_into_v2_and_queries_show_the_owner(ch_store: Any) -> None:
    from collector import queries
    from collector.router import Batch, route
    from schemas.registry import AVRO_DIR, Registry

    reg = default_registry()
    v1_only = Registry()
    v1_only.add("RunStarted", 1, AVRO_DIR / "RunStarted" / "v1.avsc")
    run_id = f"ctx-{uuid.uuid4().hex[:8]}"
    old = {k: v for k, v in samples.body("RunStarted", "old-" + run_id).items()
           if k in {f["name"] for f in json.loads((AVRO_DIR / "RunStarted/v1.avsc").read_text())["fields"]}}  # noqa: E501  # fmt: skip
    old["git"] = {k: old["git"][k] for k in ("commit", "branch", "dirty", "remote")}
    decoded_old = decode(
        reg, encode(v1_only, "RunStarted", {**old, "envelope": samples.envelope()})
    )
    assert decoded_old.writer.version == 1
    assert decoded_old.record["attached"] is False and decoded_old.record["env"] == {}
    assert decoded_old.record["git"]["changed_files"] == []

    owner = samples.body("RunStarted", run_id)
    rank1 = {**owner, "rank": 1, "attached": True, "host": "node-2", "pid": 43}
    batch = Batch()
    route(batch, decoded_old)
    for body, stream in ((owner, f"run/{run_id}"), (rank1, f"run/{run_id}/rank1")):
        record = {**body, "envelope": samples.envelope(stream)}
        route(batch, decode(reg, encode(reg, "RunStarted", record)))
    for table, data in batch.arrow().items():
        ch_store.insert_arrow(table, data)
    listed = [r for r in queries.list_runs(ch_store, 1000) if r["run_id"] == run_id]
    assert len(listed) == 1 and listed[0]["host"] == "h"
    shown = queries.show_run(ch_store, run_id)
    assert shown is not None and shown["rank"] == 0 and shown["attached"] is False
    assert shown["seeds"] == owner["seeds"] and shown["git_changed_files"] == ["train.py"]
    assert shown["env"]["HF_TOKEN"] == "<redacted>"
    assert [(r["rank"], r["host"], r["pid"]) for r in shown["ranks"]] == [(1, "node-2", 43)]
    legacy = queries.show_run(ch_store, "old-" + run_id)
    assert legacy is not None and legacy["ranks"] == [] and legacy["world_size"] == 1
