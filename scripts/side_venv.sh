# Sourced by the scripts that build a side virtualenv once per machine (blender_venv.sh,
# vllm_venv.sh): `side_venv DIR STAMP INSTALL_FUNCTION`. Under a lock, a directory whose .ready
# marker holds STAMP is kept (its path printed, nothing else done); anything else, a half-built or
# differently pinned directory, is rebuilt from scratch: a fresh venv, INSTALL_FUNCTION run with
# the venv's pip command as its arguments, then the marker. The path goes to stdout, the rest to
# stderr.
side_venv() {
    local venv=$1 stamp=$2 install=$3 start
    mkdir -p "$(dirname "$venv")"
    exec 9>"$venv.lock"
    flock 9
    if [ -f "$venv/.ready" ] && [ "$(cat "$venv/.ready")" = "$stamp" ]; then
        echo "$venv"
        return 0
    fi
    start=$(date +%s)
    rm -rf "$venv"
    "${PYTHON:-python3}" -m venv "$venv" >&2
    "$install" "$venv/bin/python" -m pip --disable-pip-version-check
    echo "$stamp" > "$venv/.ready"
    echo "$(basename "$venv") built in $(( $(date +%s) - start ))s" >&2
    echo "$venv"
}
