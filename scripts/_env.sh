# Shared by the scripts: make .venv (Python 3.11+) and install the project into it when missing
# or when pyproject.toml changed since the last install.
ensure_venv() {
  local extras="${1:-}"
  local python="${PYTHON:-}"
  if [ -z "$python" ]; then
    for candidate in python3 python3.11 python3.12 python3.13; do
      if command -v "$candidate" >/dev/null 2>&1 \
          && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        python="$candidate"; break
      fi
    done
  fi
  if [ -z "$python" ]; then
    echo "sfsync needs Python 3.11 or later on PATH (or set PYTHON=/path/to/python3.11)." >&2
    exit 3
  fi
  if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv with $python" >&2
    "$python" -m venv .venv
  fi
  local spec="."
  [ -n "$extras" ] && spec=".[$extras]"
  local stamp=".venv/.sfsync-installed-$extras"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
    echo "== installing sfsync ($spec) into .venv" >&2
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e "$spec" >&2
    touch "$stamp"
  fi
}
