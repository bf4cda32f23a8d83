# Shared by the Makefile's scripts: numbered steps that say what they do and,
# when one fails, say which step and where its log is, in one line.
# shellcheck shell=bash

TT_STATE=${TT_STATE:-$PWD/.traintrail}
TT_LOGS="$TT_STATE/logs"
mkdir -p "$TT_LOGS"

say() { printf '\033[1m==>\033[0m %s\n' "$*"; }

# step "what" LOGFILE command...   (output goes to LOGFILE; failure exits 1)
step() {
    local what=$1 logfile=$2
    shift 2
    say "$what"
    if ! "$@" >>"$logfile" 2>&1; then
        printf 'FAILED: %s (see %s)\n' "$what" "$logfile" >&2
        exit 1
    fi
}

fail() {
    printf 'FAILED: %s\n' "$*" >&2
    exit 1
}

# ensure_venv EXTRAS: create .venv and install the project with EXTRAS once
# (again when pyproject.toml or a C extension's source changes: the install
# compiles them into schemas/ and agent/, where an old build would otherwise stay).
ensure_venv() {
    local extras=$1 stamp=".venv/.installed-$1"
    if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt schemas/_avrowrite.c ] \
        && [ "$stamp" -nt agent/_kafkacore.c ]; then
        return 0
    fi
    if [ ! -x .venv/bin/python ]; then
        step "creating .venv with $(python3 --version)" "$TT_LOGS/install.log" python3 -m venv .venv
    fi
    step "installing traintrail[$extras] into .venv (first time: minutes; [dev] pulls ~3 GB of torch)" \
        "$TT_LOGS/install.log" .venv/bin/pip install --disable-pip-version-check -e ".[$extras]"
    touch "$stamp"
}
