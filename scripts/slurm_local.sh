#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for tests and for trying profiles/slurm by hand.
#
#   bash scripts/slurm_local.sh start [DIR]   # install what is missing (apt), configure, start, wait until idle
#   export SLURM_CONF=DIR/etc/slurm.conf      # then sbatch/squeue/sacct/snakemake --profile profiles/slurm use it
#   bash scripts/slurm_local.sh stop [DIR]    # stop every daemon started by `start` (by pid file)
#   bash scripts/slurm_local.sh install       # only the Debian packages (idempotent)
#
# DIR (default /tmp/dsflow-slurm) holds everything: configs, munge key and socket, the MariaDB data, spool,
# state, pid and log files. Ports are chosen free at start. Outside DIR, only /etc/slurm/slurm.conf is written,
# as one `Include DIR/etc/slurm.conf` line, and only where there is none (removed by stop): the `srun` that
# runs each job step finds the configuration there, as on a cluster node (the SLURM plugin's job step drops
# SLURM_CONF from srun's environment).
#
# What runs: munged (authentication), a private MariaDB server + slurmdbd (the accounting database, so `sacct`
# shows every job with its state, as on a production cluster), slurmctld and slurmd, all Debian's packages.
# The node is named `localhost` and is declared like a GPU server: 24 CPUs, 64 GB, two GPUs
# (SlurmdParameters=config_overrides lets slurmd accept more than this machine has). Partitions `cpu` (default)
# and `gpu`, as profiles/slurm expects. Differences from a production cluster, deliberately:
#   - the GPUs are stand-in device files (gres.conf File= nodes with /dev/null's device numbers): SLURM
#     schedules, accounts and hands out `--gpus=1` for real (CUDA_VISIBLE_DEVICES in the job), but there is no
#     GPU behind them, so TensorFlow runs on the CPU;
#   - no cgroups (proctrack/linuxproc, task/none): CPU counts and memory are scheduled and accounted but not
#     enforced, and the declared 24 CPUs / 64 GB are more than the machine has;
#   - everything runs as root (SlurmUser=root), on one host, with a shared filesystem trivially.
set -euo pipefail

cmd=${1:-}
dir=$(realpath -m "${2:-${DSFLOW_SLURM_DIR:-/tmp/dsflow-slurm}}")
sys_conf=/etc/slurm/slurm.conf
marker="# written by dsflow's scripts/slurm_local.sh"
packages=(slurm-wlm slurmdbd munge mariadb-server-core mariadb-client-core)

install() {
  local need=()
  for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
  ((${#need[@]})) || return 0
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "slurm_local: installing ${need[*]}"
  $sudo apt-get update -qq
  # The packages' own services are not wanted (and not started where policy-rc.d forbids it): ours use $dir.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

free_ports() {  # N free TCP ports on localhost
  python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...: poll until COMMAND succeeds
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  while ((SECONDS < deadline)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  echo "slurm_local: $what did not come up in time; logs in $dir/log:" >&2
  tail -n 20 "$dir"/log/*.log >&2 || true
  return 1
}

start() {
  [ "$(id -u)" = 0 ] || { echo "slurm_local: must run as root (the daemons run as root)" >&2; exit 1; }
  install
  if [ -s "$dir/run/slurmctld.pid" ] && kill -0 "$(cat "$dir/run/slurmctld.pid")" 2>/dev/null; then
    echo "slurm_local: already running in $dir"; return 0
  fi
  if [ -e "$sys_conf" ] && ! grep -qxF "$marker" "$sys_conf"; then
    echo "slurm_local: $sys_conf exists: this machine has a SLURM configuration of its own; not touching it" >&2
    exit 1
  fi
  rm -rf "$dir"
  mkdir -p "$dir"/{etc,munge,mysql,run,log,state,spool}
  chmod 755 "$dir" "$dir/munge"
  read -r ctld_port slurmd_port dbd_port db_port < <(free_ports 4)
  export SLURM_CONF=$dir/etc/slurm.conf

  # munge: a fresh key, a private socket (slurm reaches it through AuthInfo=socket=...).
  mungekey --create --keyfile "$dir/munge/munge.key" --force
  chmod 400 "$dir/munge/munge.key"
  munged --force --key-file "$dir/munge/munge.key" --socket "$dir/munge/munge.socket" \
    --pid-file "$dir/run/munged.pid" --log-file "$dir/log/munged.log" --seed-file "$dir/munge/munge.seed"
  auth="AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket"

  # MariaDB for slurmdbd: a private server on 127.0.0.1 only, without grant tables (nothing else reaches it).
  mariadb-install-db --no-defaults --user=root --datadir="$dir/mysql" --skip-test-db \
    --auth-root-authentication-method=normal >"$dir/log/mariadb-install.log" 2>&1
  setsid mariadbd --no-defaults --user=root --datadir="$dir/mysql" --socket="$dir/run/mariadb.sock" \
    --bind-address=127.0.0.1 --port="$db_port" --pid-file="$dir/run/mariadb.pid" --skip-grant-tables \
    --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900 --log-error="$dir/log/mariadb.log" \
    </dev/null >/dev/null 2>&1 &
  wait_for 60 MariaDB mariadb --no-defaults --protocol=tcp -h 127.0.0.1 -P "$db_port" -u root -e 'select 1'

  cat >"$dir/etc/slurmdbd.conf" <<EOF
$auth
DbdHost=localhost
DbdPort=$dbd_port
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$db_port
StorageUser=root
StorageLoc=slurm_acct_db
PidFile=$dir/run/slurmdbd.pid
LogFile=$dir/log/slurmdbd.log
EOF
  chmod 600 "$dir/etc/slurmdbd.conf"

  cat >"$dir/etc/slurm.conf" <<EOF
ClusterName=dsflow
SlurmctldHost=localhost
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
$auth
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
# No cgroups: processes are tracked through /proc, nothing is confined.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=5
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$dbd_port
# The munge socket for talking to slurmdbd (sacct, sacctmgr, slurmctld); the default one is not ours.
AccountingStoragePass=$dir/munge/munge.socket
AccountingStorageEnforce=associations
AccountingStorageTRES=gres/gpu
JobCompType=jobcomp/none
# Keep each job's --comment (the plugin puts the rule's name there) in the accounting, for sacct -o Comment.
AccountingStoreFlags=job_comment
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
# A job past its time limit gets SIGTERM, then SIGKILL 15 s later (production default: 30 s).
KillWait=15
MinJobAge=300
NodeName=localhost NodeAddr=127.0.0.1 CPUs=24 RealMemory=64000 Gres=gpu:2 State=UNKNOWN
PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP
EOF
  # The GPUs: SLURM's gres/gpu needs device files; stand-ins with /dev/null's device numbers (no GPU here).
  mkdir -p "$dir/dev"
  for i in 0 1; do
    mknod "$dir/dev/nvidia$i" c 1 3 2>/dev/null || ln -s /dev/null "$dir/dev/nvidia$i"
  done
  echo "NodeName=localhost Name=gpu File=$dir/dev/nvidia[0-1]" >"$dir/etc/gres.conf"

  printf '%s\nInclude %s\n' "$marker" "$SLURM_CONF" >"$sys_conf"

  slurmdbd
  wait_for 60 slurmdbd sacctmgr -n list cluster
  # The accounting a site admin sets up: the cluster, an account, the user's association.
  sacctmgr -i add cluster dsflow >/dev/null
  sacctmgr -i add account dsflow Description=dsflow Organization=dsflow >/dev/null
  sacctmgr -i add user "$(id -un)" Account=dsflow DefaultAccount=dsflow >/dev/null
  slurmctld
  wait_for 60 slurmctld scontrol ping
  slurmd -N localhost
  wait_for 90 "the node" bash -c '[ "$(sinfo -h -n localhost -o %T | sort -u)" = idle ]'
  echo "slurm_local: SLURM is up; export SLURM_CONF=$SLURM_CONF"
}

stop() {
  local pids=()
  for name in slurmd slurmctld slurmdbd mariadb munged; do
    local f="$dir/run/$name.pid"
    [ -s "$f" ] || continue
    local pid; pid=$(cat "$f")
    kill "$pid" 2>/dev/null && pids+=("$pid")
    # slurmctld/slurmd first, so that they can report to slurmdbd before it goes.
    if [ "$name" = slurmctld ] || [ "$name" = slurmdbd ]; then
      for _ in $(seq 80); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    fi
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 80); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
  done
  if grep -qxF "Include $dir/etc/slurm.conf" "$sys_conf" 2>/dev/null && grep -qxF "$marker" "$sys_conf"; then
    rm -f "$sys_conf"
  fi
  echo "slurm_local: stopped (files kept in $dir)"
}

case "$cmd" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop|install [DIR]" >&2; exit 2 ;;
esac
