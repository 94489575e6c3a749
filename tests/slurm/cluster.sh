#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the slurm-marked tests.
#   tests/slurm/cluster.sh start [SCRATCH]   install (Debian packages) when missing, configure, start,
#                                            wait until the node is idle
#   tests/slurm/cluster.sh stop  [SCRATCH]   stop the daemons by their pid files
#   tests/slurm/cluster.sh status [SCRATCH]
# Needs root (it installs packages and writes /etc/slurm/slurm.conf and the munge key).
set -euo pipefail
cmd=${1:-status}
scratch=${2:-${SSAMBA_SLURM_DIR:-/tmp/ssamba-slurm}}
conf=/etc/slurm/slurm.conf

install() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sinfo >/dev/null \
     && command -v munged >/dev/null; then return; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
}

start_munge() {
  mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1024 count=1 of=/etc/munge/munge.key status=none
  fi
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
  chmod 400 /etc/munge/munge.key
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  munge -n | unmunge | grep -q "STATUS: *Success"
}

write_conf() {
  local host cpus
  host=$(hostname); cpus=$(nproc)
  mkdir -p "$scratch/state" "$scratch/d" /etc/slurm
  cat > "$conf" <<CONF
ClusterName=local
SlurmctldHost=$host
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmUser=root
SlurmctldPidFile=$scratch/slurmctld.pid
SlurmdPidFile=$scratch/slurmd.pid
SlurmdSpoolDir=$scratch/d
StateSaveLocation=$scratch/state
SlurmctldLogFile=$scratch/ctld.log
SlurmdLogFile=$scratch/d.log
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
NodeName=$host CPUs=$cpus RealMemory=20000 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
}

running() { [ -f "$scratch/$1.pid" ] && kill -0 "$(cat "$scratch/$1.pid")" 2>/dev/null; }

case "$cmd" in
  start)
    install
    start_munge
    write_conf
    running slurmctld || slurmctld
    sleep 1
    running slurmd || slurmd
    for _ in $(seq 100); do
      if sinfo -h -o %t 2>/dev/null | grep -qx idle; then echo "slurm: node idle ($scratch)"; exit 0; fi
      sleep 0.2
    done
    echo "slurm: the node did not become idle; see $scratch/ctld.log and $scratch/d.log" >&2
    exit 1
    ;;
  stop)
    for d in slurmd slurmctld; do
      if running "$d"; then kill "$(cat "$scratch/$d.pid")"; fi
    done
    echo "slurm: stopped"
    ;;
  status)
    sinfo 2>/dev/null || { echo "slurm: not running"; exit 1; }
    ;;
  *)
    echo "usage: $0 start|stop|status [SCRATCH]" >&2
    exit 2
    ;;
esac
