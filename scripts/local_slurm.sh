#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, to try `launcher=slurm` for real and to run the cluster tests.
#
#   sudo bash scripts/local_slurm.sh install   # Debian/Ubuntu: slurm-wlm + munge from apt (once)
#   sudo bash scripts/local_slurm.sh start     # munged, slurmctld, slurmd on this host; waits until idle
#   bash scripts/local_slurm.sh status         # sinfo and the queue
#   sudo bash scripts/local_slurm.sh stop      # shuts the daemons down
#
# The cluster: one node (this host, its CPUs and memory as `slurmd -C` reports them), one partition `local`,
# CPUs scheduled one by one (CR_CPU), no accounting storage (as on many small clusters), no GPUs. The
# daemons talk over 127.0.0.1 and bind no other address. The configuration goes to /etc/slurm/slurm.conf,
# only if that file is absent or was written by this script and no other cluster answers here; `stop`
# stops only this script's daemons (by their pid files): an existing cluster is never touched.
# `start` also installs (as `install`) when the daemons are missing. Root is needed (daemons, /etc, apt).
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by scripts/local_slurm.sh"
STATE=/var/spool/soups-slurm
LOGS=/var/log/soups-slurm

need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "error: '$1' needs root (it installs packages, starts or stops daemons); run it with sudo" >&2
    exit 1
  fi
}

install() {
  need_root install
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
    return
  fi
  if ! command -v apt-get >/dev/null; then
    echo "error: no apt-get here; install SLURM (slurmctld, slurmd) and munge with this system's packages" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

ours() { [ -f "$CONF" ] && head -1 "$CONF" | grep -q "^$MARK"; }

write_conf() {
  if [ -f "$CONF" ] && ! ours; then
    echo "error: $CONF exists and was not written by this script: this machine has a SLURM configuration" \
         "already; use that cluster (or move the file away to try the local one)" >&2
    exit 1
  fi
  local name
  name=$(timeout 5 scontrol show config 2>/dev/null | awk -F= '/^ClusterName/ {gsub(/ /, "", $2); print $2}' || true)
  if [ -n "$name" ] && [ "$name" != soups-local ]; then
    echo "error: a SLURM cluster ($name) already answers on this machine (configless or elsewhere configured);" \
         "use it, the local one would shadow it" >&2
    exit 1
  fi
  local node
  node=$(slurmd -C | head -1)   # NodeName=<host> CPUs=... RealMemory=...
  mkdir -p "$STATE/ctld" "$STATE/d" "$LOGS" /etc/slurm
  cat > "$CONF.tmp" <<EOF
$MARK: a one-node cluster for trying launcher=slurm
ClusterName=soups-local
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=/run/soups-slurmctld.pid
SlurmdPidFile=/run/soups-slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
# no AccountingStorageType: no accounting, so sacct has nothing to read (launcher=slurm then follows jobs
# with squeue, docs/scale.md); bind 127.0.0.1 only, never every address
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
# a requeued job may start again at once, and a killed one is gone within seconds
KillWait=5
MinJobAge=300
SchedulerParameters=bf_interval=5
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$CONF.tmp" "$CONF"
}

# Whether each daemon answers (not whether a process of that name exists: a killed one can linger a while)
munge_up() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }
ctld_up() { timeout 5 scontrol ping 2>/dev/null | grep -q "is UP"; }
alive() { [ -f "$1" ] && ps -o stat= -p "$(cat "$1")" 2>/dev/null | grep -qv Z; }   # a live, non-zombie pid
ctld_alive() { alive /run/soups-slurmctld.pid; }
slurmd_up() { timeout 5 scontrol show slurmd >/dev/null 2>&1; }

start_munge() {
  if munge_up; then return; fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  if [ ! -s /etc/munge/munge.key ]; then
    runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
  fi
  runuser -u munge -- munged --force   # --force: a stale socket of a killed munged is no obstacle
}

start() {
  need_root start
  install
  write_conf
  start_munge
  # a busy controller may miss one ping: a new one (-c: a fresh cluster, no jobs left from a previous one) only
  # when the old one is gone
  ctld_up || ctld_alive || slurmctld -c
  slurmd_up || slurmd
  local host state
  host=$(hostname -s)
  for _ in $(seq 1 60); do
    state=$(timeout 5 sinfo -h -n "$host" -o %T 2>/dev/null || true)
    case "$state" in
      idle|mixed|allocated|completing|planned) echo "local SLURM cluster up: node $host $state (partition local)"; return ;;
      down*|drain*) scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
    esac
    sleep 1
  done
  echo "error: the node did not become idle in 60 s (state: '${state:-no answer}'); see $LOGS/" >&2
  exit 1
}

stop() {
  need_root stop
  if ! ours; then
    echo "error: $CONF was not written by this script: not stopping a cluster it did not start" >&2
    exit 1
  fi
  local pid
  if ! alive /run/soups-slurmd.pid && ! alive /run/soups-slurmctld.pid; then
    echo "the local SLURM cluster was not running"
    return
  fi
  for daemon in slurmd slurmctld; do
    pid=/run/soups-$daemon.pid
    if alive "$pid"; then kill "$(cat "$pid")" 2>/dev/null || true; fi
  done
  for _ in $(seq 1 20); do
    alive /run/soups-slurmd.pid || alive /run/soups-slurmctld.pid || break
    sleep 0.5
  done
  echo "local SLURM cluster stopped"
}

status() {
  if ! ctld_up; then
    echo "the local SLURM cluster is not running; start it: sudo bash scripts/local_slurm.sh start"
    return
  fi
  sinfo
  squeue
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: bash scripts/local_slurm.sh install|start|stop|status" >&2; exit 1 ;;
esac
