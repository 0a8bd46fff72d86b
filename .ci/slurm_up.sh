#!/usr/bin/env bash
# A single-node SLURM on this machine, for the `slurm` tests: install (Debian's packages), configure, start.
# Idempotent: whatever is already installed or running is kept. Stops nothing. Needs root.
set -euo pipefail

if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1 || ! command -v sinfo >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi

# -- munge: a key owned by the munge user, then the daemon
install -d -o munge -g munge -m 700 /etc/munge /var/log/munge /var/lib/munge
install -d -o munge -g munge -m 755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  su -s /bin/sh munge -c /usr/sbin/munged
  for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
fi

# -- slurm.conf for this one node (written once; a changed machine shape rewrites it)
HOST=$(hostname -s)
CPUS=$(nproc)
MEM=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
CONF_DIR=/etc/slurm
install -d "$CONF_DIR" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
NEW=$(mktemp)
cat > "$NEW" <<CONF
# written by .ci/slurm_up.sh: one node, this machine
ClusterName=bar
SlurmctldHost=${HOST}
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MinJobAge=300
KillWait=10
JobRequeue=1
NodeName=${HOST} CPUs=${CPUS} RealMemory=${MEM} State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO DefMemPerCPU=3000
CONF
if ! cmp -s "$NEW" "$CONF_DIR/slurm.conf"; then
  cp "$NEW" "$CONF_DIR/slurm.conf"
  CHANGED=1
else
  CHANGED=0
fi
rm -f "$NEW"

# -- daemons (both daemonize); a changed config is re-read with scontrol reconfigure
if ! pgrep -x slurmctld >/dev/null; then slurmctld; elif [ "$CHANGED" = 1 ]; then scontrol reconfigure || true; fi
if ! pgrep -x slurmd >/dev/null; then slurmd; fi

for _ in $(seq 60); do
  if sinfo -h -o '%T' 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'; then
    sinfo
    exit 0
  fi
  state=$(sinfo -h -o '%T' 2>/dev/null || true)
  case "$state" in *drain*|*down*) scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;; esac
  sleep 1
done
echo "slurm did not come up: see /var/log/slurm/" >&2
sinfo >&2 || true
exit 1
