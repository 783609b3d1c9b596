#!/usr/bin/env bash
# A one-machine SLURM cluster to try the templates on (and for CI's tests/test_slurm.py): one controller and
# two compute nodes, n1 and n2, both this machine (two slurmd daemons on ports 17001/17002), in a partition
# named gpu like the templates', with no GPUs (submit with GPUS_PER_NODE=0: one CPU process per node).
#
#   sudo bash scripts/slurm/local-cluster.sh        # install SLURM when missing, start it; quick when it is up
#   sudo bash scripts/slurm/local-cluster.sh stop   # stop its daemons
#
# Needs root: it writes /etc/slurm/slurm.conf, /etc/munge/munge.key (when missing) and /etc/hosts
# (n1 and n2 as 127.0.0.1, when missing), and starts munged, slurmctld and the two slurmd. Written for
# Debian's SLURM 22.05 (apt-get install slurmctld slurmd munge slurm-client); no accounting database.
set -euo pipefail

NODES=(n1 n2)
say() { echo "local-cluster.sh: $*"; }
[ "$(id -u)" -eq 0 ] || { echo "local-cluster.sh: error: needs root (it writes /etc/slurm and starts daemons); expected sudo bash $0" >&2; exit 1; }

stop_daemons() {
  local pid_file
  for pid_file in /run/slurmctld.pid /run/slurmd-n1.pid /run/slurmd-n2.pid; do
    if [ -s "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
      kill "$(cat "$pid_file")"
    fi
    rm -f "$pid_file"
  done
}

if [ "${1:-}" = stop ]; then
  stop_daemons
  say "stopped slurmctld and slurmd n1, n2 (munged keeps running)"
  exit 0
elif [ -n "${1:-}" ]; then
  echo "local-cluster.sh: error: unknown argument '$1'; expected none (start) or stop" >&2
  exit 2
fi

idle_nodes() { sinfo -h -N -p gpu -o '%N %t' 2>/dev/null | awk '$2 == "idle" || $2 == "mix" || $2 == "alloc"' | sort -u | wc -l; }
stop_hint() { say "to stop it: sudo bash $0 stop"; }

# Each node gets all of this machine's CPUs and half its memory (they are the same machine).
CPUS=$(nproc)
MEMORY=$(awk '/^MemTotal:/ {print int($2 / 1024 / 2)}' /proc/meminfo)
CONF=$(cat <<EOF
# written by deepnets-bench scripts/slurm/local-cluster.sh
ClusterName=deepnets-local
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmctldPidFile=/run/slurmctld.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmdPidFile=/run/slurmd-%n.pid
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# A requeued job may start again at once (the default waits for the node to be released).
KillWait=10
# A requeued job waits this job credential lifetime before it may start again (default 120 s).
AuthInfo=cred_expire=10
# Every node is this machine's CPUs and half its memory.
NodeName=n1 NodeAddr=127.0.0.1 Port=17001 CPUs=$CPUS RealMemory=$MEMORY State=UNKNOWN
NodeName=n2 NodeAddr=127.0.0.1 Port=17002 CPUs=$CPUS RealMemory=$MEMORY State=UNKNOWN
PartitionName=gpu Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
EOF
)
if command -v sinfo >/dev/null && [ "$(cat /etc/slurm/slurm.conf 2>/dev/null)" = "$CONF" ] && [ "$(idle_nodes)" -eq 2 ]; then
  say "already up: partition gpu, nodes n1 n2"
  stop_hint
  exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
   || ! command -v sbatch >/dev/null; then
  say "installing SLURM and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq slurmctld slurmd munge slurm-client >/dev/null
fi

# munge: the nodes and the controller authenticate with one shared key.
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown munge:munge /etc/munge/munge.key 2>/dev/null || true
chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
if ! munge -n >/dev/null 2>&1; then
  if id munge >/dev/null 2>&1; then runuser -u munge -- munged --force; else munged --force; fi
  sleep 1
fi

grep -qE '^127\.0\.0\.1[[:space:]].*\bn1\b.*\bn2\b' /etc/hosts || echo "127.0.0.1 n1 n2" >> /etc/hosts

mkdir -p /etc/slurm /var/lib/slurm/slurmctld /var/log/slurm /var/spool/slurmd/n1 /var/spool/slurmd/n2
if [ "$(cat /etc/slurm/slurm.conf 2>/dev/null)" != "$CONF" ]; then
  printf '%s\n' "$CONF" > /etc/slurm/slurm.conf
  stop_daemons  # they read the old configuration
fi

running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
running /run/slurmctld.pid || slurmctld
for node in "${NODES[@]}"; do
  running "/run/slurmd-$node.pid" || slurmd -N "$node"
done

# Wait (bounded) for both nodes; a node that comes back down or drained (e.g. after a restart) is resumed.
for ((second = 0; second < 60; second++)); do
  [ "$(idle_nodes)" -eq 2 ] && break
  if sinfo -h -N -p gpu -o '%t' 2>/dev/null | grep -qE 'down|drain|drng|fail'; then
    scontrol update nodename=n[1-2] state=resume 2>/dev/null || true
  fi
  sleep 1
done
if [ "$(idle_nodes)" -ne 2 ]; then
  echo "local-cluster.sh: error: the nodes did not come up within 60 s; see /var/log/slurm/*.log" >&2
  sinfo -N >&2 || true
  exit 1
fi
say "up: partition gpu, nodes n1 n2 ($CPUS CPUs, $MEMORY MB each); submit with GPUS_PER_NODE=0"
stop_hint
