#!/usr/bin/env bash
# A real Slurm (Debian's slurmctld/slurmd 22.05 + munge) on this one host, in one directory.
#   bash scripts/slurm/local.sh install            apt packages (root; Debian/Ubuntu)
#   bash scripts/slurm/local.sh start BASE [N]     N fake nodes n1..nN (default 1), 1 CPU each
#   bash scripts/slurm/local.sh stop BASE
# Clients need SLURM_CONF=BASE/slurm.conf. PORT (default 16817) moves every port, so two
# clusters can run side by side. Nothing under /etc/slurm or /run/munge is used.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cmd=${1:?usage: local.sh install|start BASE [N]|stop BASE}
case "$cmd" in
install)
    if command -v slurmctld >/dev/null && command -v sbatch >/dev/null && command -v munged >/dev/null; then
        exit 0
    fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "local.sh: installing Slurm needs root and apt-get (apt-get install slurmctld slurmd slurm-client munge)" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge >/dev/null
    ;;
start)
    B=$(realpath -m "${2:?BASE}"); N=${3:-1}; PORT=${PORT:-16817}
    mkdir -p "$B"/{state,spool,run,log,munge}; chmod 700 "$B/munge"
    host=$(hostname -s)
    nodes=""
    for i in $(seq 1 "$N"); do
        mkdir -p "$B/spool/n$i"
        nodes+="NodeName=n$i NodeHostname=$host NodeAddr=127.0.0.1 Port=$((PORT + i)) CPUs=1 RealMemory=4000 State=UNKNOWN"$'\n'
    done
    if [ ! -f "$B/munge/munge.key" ]; then
        dd if=/dev/urandom of="$B/munge/munge.key" bs=1024 count=1 status=none
        chmod 400 "$B/munge/munge.key"
    fi
    python3 - "$here/slurm.conf.in" "$B/slurm.conf" "$B" "$host" "$PORT" "$nodes" <<'PY'
import sys
src, dst, base, host, port, nodes = sys.argv[1:]
text = open(src).read()
for k, v in {"@BASE@": base, "@HOST@": host, "@PORT@": port, "@NODES@": nodes.rstrip()}.items():
    text = text.replace(k, v)
open(dst, "w").write(text)
PY
    export SLURM_CONF="$B/slurm.conf"
    munged --force --key-file="$B/munge/munge.key" --socket="$B/munge/munge.socket.2" \
        --pid-file="$B/munge/munged.pid" --log-file="$B/munge/munged.log" --seed-file="$B/munge/munged.seed"
    slurmctld -f "$B/slurm.conf"
    for i in $(seq 1 "$N"); do slurmd -f "$B/slurm.conf" -N "n$i"; done
    for _ in $(seq 1 200); do
        idle=$(sinfo -h -N -o %T 2>/dev/null | grep -c idle || true)
        [ "$idle" -ge "$N" ] && { echo "$SLURM_CONF"; exit 0; }
        sleep 0.1
    done
    echo "local.sh: the nodes did not come up; see $B/log" >&2
    exit 1
    ;;
stop)
    B=$(realpath -m "${2:?BASE}")
    export SLURM_CONF="$B/slurm.conf"
    scontrol shutdown >/dev/null 2>&1 || true
    for _ in $(seq 1 100); do
        ls "$B"/run/*.pid >/dev/null 2>&1 || break
        sleep 0.2
    done
    for f in "$B"/run/*.pid; do [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null; rm -f "$f"; done
    munged --stop --socket="$B/munge/munge.socket.2" >/dev/null 2>&1 || true
    ;;
*)
    echo "usage: local.sh install|start BASE [N]|stop BASE" >&2; exit 2 ;;
esac
