# Sourced by scripts/test and scripts/demo: make sure .venv exists and holds this project with its dev
# extras. Reinstalls only when pyproject.toml changed (a stamp file keeps the hash of the last install).
# PYTHON may name the interpreter to create the venv with (default python3; needs 3.11 or newer).

ensure_venv() {
    local python="${PYTHON:-python3}"
    if [ ! -x .venv/bin/python ]; then
        if ! command -v "$python" >/dev/null 2>&1; then
            echo "error: $python not found; install Python 3.11 or newer (or set PYTHON=/path/to/python3.11)" >&2
            exit 1
        fi
        if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
            echo "error: Python 3.11 or newer is required; $python is $("$python" -V 2>&1)." \
                 "Set PYTHON=/path/to/python3.11" >&2
            exit 1
        fi
        echo "creating .venv with $("$python" -V 2>&1)" >&2
        "$python" -m venv .venv
    fi
    if ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "error: .venv has $(.venv/bin/python -V 2>&1); Python 3.11 or newer is required." \
             "Remove .venv and run again with PYTHON=/path/to/python3.11" >&2
        exit 1
    fi
    local stamp=.venv/.ig-collector-installed want
    want="$(.venv/bin/python -c 'import hashlib; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest())')"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        echo "installing ig-insights-collector and its dev dependencies into .venv" >&2
        .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
        echo "$want" > "$stamp"
    fi
}
