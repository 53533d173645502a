#!/usr/bin/env bash
# Set up causalzoo in ./.venv and run it.
#
#   ./run.sh demo [ARGS...]   set up, then run `causalzoo demo ARGS...`
#   ./run.sh test [ARGS...]   set up, run the test suite (ARGS go to pytest),
#                             then build the docs with `mkdocs build --strict`
#
# Needs only a Python >= 3.12 somewhere (PATH, $PYTHON or pyenv) and access to PyPI.
# Environment knobs:
#   PYTHON=/path/to/python3.12        interpreter to build .venv with
#   CAUSALZOO_SERIAL_TESTS=1          run pytest without pytest-xdist (-n 2)
#   CAUSALZOO_HYPOTHESIS_PROFILE=...  hypothesis profile for the tests (default: ci)
#   CAUSALZOO_DATA=/path              folder of the shared data sets (default: ../shared/data)
set -euo pipefail

usage() {
    cat <<'EOF'
usage: ./run.sh demo [ARGS...]   set up and run `causalzoo demo` (ARGS are passed on)
       ./run.sh test [ARGS...]   set up, run the test suite (ARGS go to pytest), build the docs
EOF
}

log() { printf 'causalzoo: %s\n' "$*" >&2; }
die() { printf 'causalzoo: error: %s\n' "$*" >&2; exit 1; }

if [[ $# -lt 1 ]]; then
    usage >&2
    exit 2
fi
cmd="$1"
shift
case "$cmd" in
    demo | test) ;;
    -h | --help | help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
esac

caller_dir="$(pwd)"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$repo_root"

venv="$repo_root/.venv"
marker="$venv/.causalzoo-installed"

# --- find a Python >= 3.12 ------------------------------------------------------------
# Prints the absolute path of the interpreter behind "$@" if it runs and is >= 3.12.
# Candidates are run for real: a pyenv shim such as `python3.12` exists on PATH but fails
# unless PYENV_VERSION selects a matching version.
probe() {
    "$@" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1 || return 1
    "$@" -c 'import sys; print(sys.executable)' 2>/dev/null
}

find_python() {
    local c exe v
    for c in python3.13 python3.12 python3; do
        if command -v "$c" >/dev/null 2>&1 && exe="$(probe "$c")"; then
            printf '%s\n' "$exe"
            return 0
        fi
    done
    if command -v pyenv >/dev/null 2>&1; then
        local root versions=()
        root="$(pyenv root 2>/dev/null)" || root=""
        if [[ -n "$root" && -d "$root/versions" ]]; then
            # 3.12 first (the floor that CI tests, with the widest wheel coverage), then newer.
            while IFS= read -r v; do
                [[ -n "$v" ]] && versions+=("$v")
            done < <(cd "$root/versions" && ls -d 3.1[2-9]* 2>/dev/null | sort -t. -k1,1n -k2,2n -k3,3n | awk '
                /^3\.12/ { first[++n1] = $0; next } { rest[++n2] = $0 }
                END { for (i = n1; i >= 1; i--) print first[i]; for (i = n2; i >= 1; i--) print rest[i] }')
        fi
        for v in ${versions[@]+"${versions[@]}"}; do
            if [[ -x "$root/versions/$v/bin/python3" ]] && exe="$(probe "$root/versions/$v/bin/python3")"; then
                printf '%s\n' "$exe"
                return 0
            fi
            for c in "python${v%.*}" python3; do
                if exe="$(PYENV_VERSION="$v" probe "$c")"; then
                    printf '%s\n' "$exe"
                    return 0
                fi
            done
        done
    fi
    return 1
}

python_version() { "$1" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])'; }

venv_ok() {
    [[ -x "$venv/bin/python" ]] && probe "$venv/bin/python" >/dev/null
}

if ! venv_ok; then
    if [[ -n "${PYTHON:-}" ]]; then
        py="$(probe "$PYTHON")" ||
            die "PYTHON=$PYTHON is not a working Python >= 3.12; unset it or point it at one."
    elif ! py="$(find_python)"; then
        cat >&2 <<'EOF'
causalzoo: error: no Python >= 3.12 found (tried $PYTHON, python3.13, python3.12, python3
and pyenv's versions). Get one in any of these ways, then run this script again:
  pyenv install 3.12            # then: PYTHON="$(pyenv root)/versions/3.12.<x>/bin/python3" ./run.sh ...
  uv python install 3.12        # then: PYTHON="$(uv python find 3.12)" ./run.sh ...
  https://www.python.org/downloads/   (or your system's python3.12 package)
EOF
        exit 1
    fi
    log "using Python $(python_version "$py") at $py"
    if [[ -e "$venv" ]]; then
        log "replacing $venv (missing, broken or older than Python 3.12)"
        rm -rf "$venv"
    fi
    log "creating virtual environment in .venv"
    "$py" -m venv "$venv" ||
        die "could not create .venv with $py (on Debian/Ubuntu: apt-get install python3.12-venv)."
else
    log "using Python $(python_version "$venv/bin/python") at $venv/bin/python"
fi

vpy="$venv/bin/python"

# --- install (only when pyproject.toml changed) ----------------------------------------
want_hash="$("$vpy" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' pyproject.toml)"
have_hash="$(cat "$marker" 2>/dev/null || true)"
if [[ "$want_hash" != "$have_hash" ]]; then
    log "installing dependencies (first run takes ~2 min)"
    rm -f "$marker"
    install_log="$venv/pip-install.log"
    if ! { "$vpy" -m pip install --upgrade pip &&
        "$vpy" -m pip install -e ".[test,docs]"; } >"$install_log" 2>&1; then
        tail -n 40 "$install_log" >&2
        die "pip install failed; the full log is in $install_log"
    fi
    printf '%s\n' "$want_hash" >"$marker"
    log "dependencies installed"
fi

# --- environment -----------------------------------------------------------------------
# JAX picks its platform itself: nothing is forced, so a CUDA set-up keeps working.
# mkdocs-material prints a long banner about its successor on every build; it is not a
# warning about these docs.
export NO_MKDOCS_2_WARNING="${NO_MKDOCS_2_WARNING:-1}"
if [[ -z "${CAUSALZOO_DATA:-}" && -d "$repo_root/../shared/data" ]]; then
    CAUSALZOO_DATA="$(cd "$repo_root/../shared/data" && pwd)"
    export CAUSALZOO_DATA
fi

case "$cmd" in
    demo)
        # Back to the caller's folder so that relative paths (--out my-folder) mean what
        # the caller meant.
        cd "$caller_dir"
        log "running: causalzoo demo $*"
        exec "$venv/bin/causalzoo" demo "$@"
        ;;
    test)
        export CAUSALZOO_HYPOTHESIS_PROFILE="${CAUSALZOO_HYPOTHESIS_PROFILE:-ci}"
        xdist=(-n 2 --dist loadfile)
        if [[ "${CAUSALZOO_SERIAL_TESTS:-0}" == "1" ]]; then
            xdist=()
        fi
        status=0
        log "running tests"
        "$vpy" -m pytest ${xdist[@]+"${xdist[@]}"} "$@" || status=$?
        log "building the docs (mkdocs build --strict)"
        site_dir="$(mktemp -d)"
        trap 'rm -rf "$site_dir"' EXIT
        docs_rc=0
        "$vpy" -m mkdocs build --strict --site-dir "$site_dir/site" >"$site_dir/build.log" 2>&1 ||
            docs_rc=$?
        grep -v -E '^INFO +- +(Cleaning site|Building documentation|Documentation built)' \
            "$site_dir/build.log" >&2 || true
        if [[ $docs_rc -ne 0 ]]; then
            log "docs build failed (mkdocs build --strict fails on any warning)"
            [[ $status -ne 0 ]] || status=$docs_rc
        fi
        if [[ $status -ne 0 ]]; then
            log "FAILED (exit $status)"
        else
            log "all tests passed and the docs build cleanly"
        fi
        exit "$status"
        ;;
esac
