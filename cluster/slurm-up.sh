#!/usr/bin/env bash
# Start a real single-node SLURM 22.05 (Debian 12 packages) on this machine, for the
# slurm smoke test and for developers who want to try profiles/slurm. See cluster/README.md.
#
# No accounting database (no slurmdbd/mariadb). Snakemake therefore has to be run with
# `--slurm-status-command squeue` (without it the executor plugin calls `sacct`, which
# fails on this cluster, and the run hangs).
#
# Idempotent: daemons that already run (pid file + live process of the right name) are
# left alone; packages are installed only when missing. Needs root. No systemd needed.
#
# Environment:
#   CLIPBIAS_SLURM_STATE   state folder: pid files, logs, spool (default /run/clipbias-slurm)
#   SLURM_CONF             slurm.conf to write/use (default /etc/slurm/slurm.conf; every
#                          SLURM command honours this variable, so export it for clients)
#   CLIPBIAS_SLURM_WAIT    seconds to wait for each daemon / the idle node (default 60)
#   CLIPBIAS_SLURM_NO_INSTALL=1  fail instead of running apt-get when packages are missing
#
# Stop everything with cluster/slurm-down.sh (same environment).
set -euo pipefail

STATE="${CLIPBIAS_SLURM_STATE:-/run/clipbias-slurm}"
CONF="${SLURM_CONF:-/etc/slurm/slurm.conf}"
WAIT="${CLIPBIAS_SLURM_WAIT:-60}"
MARKER="# written by clipbias cluster/slurm-up.sh"
MUNGE_KEY=/etc/munge/munge.key
MUNGE_SOCKET_DIR=/run/munge

# munged runs as user munge and slurmctld as user slurm: each writes its pid file and log
# into a folder it owns.
MUNGE_DIR="$STATE/munge"
SLURM_DIR="$STATE/slurm"
MUNGE_PID="$MUNGE_DIR/munged.pid"
CTLD_PID="$SLURM_DIR/slurmctld.pid"
SLURMD_PID="$SLURM_DIR/slurmd.pid"

[[ "$WAIT" =~ ^[0-9]+$ && "$WAIT" -ge 1 ]] || { echo "CLIPBIAS_SLURM_WAIT must be >= 1" >&2; exit 1; }

STARTED=()  # pid files of daemons started by this invocation (stopped again on failure)

log() { printf '[slurm-up] %s\n' "$*" >&2; }

# Keep one previous log, so the log tail printed on failure belongs to this start.
rotate() {
    local f
    for f in "$@"; do
        if [[ -e "$f" ]]; then mv -f "$f" "$f.prev"; fi
    done
}

tail_logs() {
    local f
    for f in "$MUNGE_DIR"/munged.log "$MUNGE_DIR"/munged.stderr \
             "$SLURM_DIR"/slurmctld.log "$SLURM_DIR"/slurmctld.stderr \
             "$SLURM_DIR"/slurmd.log "$SLURM_DIR"/slurmd.stderr; do
        if [[ -s "$f" ]]; then
            printf -- '----- last lines of %s -----\n' "$f" >&2
            tail -n 25 "$f" >&2 || true
        fi
    done
}

# Process named $2 whose pid is in file $1 is alive?
pid_alive() {
    local pidfile=$1 name=$2 pid
    [[ -s "$pidfile" ]] || return 1
    pid=$(<"$pidfile")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/comm" ]] || return 1
    [[ "$(<"/proc/$pid/comm")" == "$name" ]]
}

fail() {
    log "ERROR: $*"
    tail_logs
    local pidfile pid
    # Undo only what this invocation started, newest first, by PID.
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
        pidfile=${STARTED[$i]}
        if [[ -s "$pidfile" ]]; then
            pid=$(<"$pidfile")
            log "stopping pid $pid ($pidfile) started by this run"
            kill -TERM "$pid" 2>/dev/null || true
            timeout -s KILL 15 tail --pid="$pid" -f /dev/null 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
            rm -f "$pidfile"
        fi
    done
    log "logs are in $MUNGE_DIR and $SLURM_DIR; cluster/slurm-down.sh cleans up whatever is left"
    exit 1
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every second, bounded by timeout -s KILL.
wait_for() {
    local secs=$1 what=$2
    shift 2
    # shellcheck disable=SC2016  # "$@" is expanded by the inner bash
    if ! { timeout -s KILL "$secs" bash -c 'until "$@" >/dev/null 2>&1; do sleep 1; done' _ "$@"; } 2>/dev/null; then
        fail "timed out after ${secs}s waiting for: $what"
    fi
}

[[ $EUID -eq 0 ]] || { log "ERROR: run as root (daemons, /etc/munge, apt-get)"; exit 1; }

T0=$SECONDS

# ---------------------------------------------------------------- 1. packages
if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
    && command -v sbatch >/dev/null && command -v munged >/dev/null; then
    log "packages present (slurm $(slurmd -V 2>/dev/null | awk '{print $2}'))"
else
    if [[ "${CLIPBIAS_SLURM_NO_INSTALL:-0}" == 1 ]]; then
        log "ERROR: slurm-wlm/munge not installed and CLIPBIAS_SLURM_NO_INSTALL=1"
        exit 1
    fi
    log "installing slurm-wlm munge with apt-get (about 15-60 s) ..."
    export DEBIAN_FRONTEND=noninteractive
    apt_log=$(mktemp -t clipbias-slurm-apt.XXXXXX.log)
    if ! timeout -s KILL 300 apt-get -o DPkg::Lock::Timeout=120 update -qq >"$apt_log" 2>&1 \
        || ! timeout -s KILL 600 apt-get -o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends \
            slurm-wlm munge >>"$apt_log" 2>&1; then
        tail -n 30 "$apt_log" >&2
        log "ERROR: apt-get failed (full log: $apt_log)"
        exit 1
    fi
    rm -f "$apt_log"
    log "installed in $((SECONDS - T0)) s"
fi
T_INSTALL=$((SECONDS - T0))
T1=$SECONDS

id slurm >/dev/null 2>&1 || { log "ERROR: user 'slurm' missing (package postinst failed?)"; exit 1; }
id munge >/dev/null 2>&1 || { log "ERROR: user 'munge' missing (package postinst failed?)"; exit 1; }

# ---------------------------------------------------------------- 2. folders
install -d -m 0755 "$STATE"
install -d -m 0755 -o munge -g munge "$MUNGE_DIR"
install -d -m 0755 -o slurm -g slurm "$SLURM_DIR" "$STATE/spool-ctld"
install -d -m 0755 "$STATE/spool-d"
install -d -m 0755 -o munge -g munge "$MUNGE_SOCKET_DIR"
install -d -m 0700 -o munge -g munge /etc/munge
install -d -m 0755 "$(dirname "$CONF")"

# ---------------------------------------------------------------- 3. munge
if [[ ! -s "$MUNGE_KEY" ]]; then
    log "creating $MUNGE_KEY"
    (umask 077 && dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none)
fi
chown munge:munge "$MUNGE_KEY"
chmod 0400 "$MUNGE_KEY"

if pid_alive "$MUNGE_PID" munged; then
    log "munged already running (pid $(<"$MUNGE_PID"))"
elif timeout -s KILL 5 bash -c 'munge -n | unmunge' >/dev/null 2>&1; then
    log "a munged not started by this script already answers; using it (slurm-down.sh will not stop it)"
else
    rm -f "$MUNGE_PID"
    rotate "$MUNGE_DIR/munged.log" "$MUNGE_DIR/munged.stderr"
    log "starting munged"
    # munged daemonizes itself and writes its pid file.
    runuser -u munge -- munged --pid-file="$MUNGE_PID" --log-file="$MUNGE_DIR/munged.log" \
        </dev/null >>"$MUNGE_DIR/munged.stderr" 2>&1 || fail "munged exited with status $?"
    STARTED+=("$MUNGE_PID")
    wait_for "$WAIT" "munged pid file" test -s "$MUNGE_PID"
fi
wait_for "$WAIT" "munge -n | unmunge" bash -c 'munge -n | unmunge'

# ---------------------------------------------------------------- 4. slurm.conf
HOST=$(hostname -s)
NODE_LINE=$(slurmd -C | head -n 1)
[[ "$NODE_LINE" == NodeName=* ]] || fail "unexpected 'slurmd -C' output: $NODE_LINE"
# Leave 5 % headroom under the detected memory, so a small fluctuation of what the
# kernel reports does not drain the node ("Low RealMemory").
MEM=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$NODE_LINE")
[[ -n "$MEM" ]] || fail "no RealMemory in 'slurmd -C' output: $NODE_LINE"
NODE_LINE=${NODE_LINE/RealMemory=$MEM/RealMemory=$((MEM * 95 / 100))}

new_conf=$(cat <<EOF
$MARKER -- regenerate with it, do not edit by hand.
# Single-node test cluster, setup A (no accounting DB): run snakemake with
# --slurm-status-command squeue. State, pid files and logs: $STATE
ClusterName=clipbias
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
ReturnToService=2
StateSaveLocation=$STATE/spool-ctld
SlurmdSpoolDir=$STATE/spool-d
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$SLURM_DIR/slurmctld.log
SlurmdLogFile=$SLURM_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# Scheduling: cores and memory are consumable; a job without a memory request gets
# DefMemPerCPU per CPU instead of the whole node.
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
# Reject at submit time a job that no node of its partition can ever run (too many CPUs or
# too much memory) instead of leaving it PENDING (reason PartitionConfig) forever.
EnforcePartLimits=ALL
# No accounting (setup A). Keep MinJobAge at its default (300 s): the plugin's squeue
# mode silently falls back to sacct when MinJobAge < 3 x init-seconds.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
KillWait=5
InactiveLimit=0
# No GPU on this machine: no Gres. GPU rules get gpu/gpu_model/partition only from
# profiles/slurm set-resources; the smoke test overrides them (gpu=0, partition debug).
$NODE_LINE NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
)

if pid_alive "$CTLD_PID" slurmctld && pid_alive "$SLURMD_PID" slurmd; then
    log "slurmctld and slurmd already running; $CONF left as it is"
else
    if [[ -e "$CONF" ]] && ! grep -qF "$MARKER" "$CONF"; then
        fail "$CONF exists and was not written by this script; refusing to overwrite it (set SLURM_CONF to another path to use a separate file)"
    fi
    printf '%s\n' "$new_conf" >"$CONF.tmp"
    chmod 0644 "$CONF.tmp"
    mv "$CONF.tmp" "$CONF"
    export SLURM_CONF="$CONF"

    # ------------------------------------------------------------ 5. slurmctld, slurmd
    if pid_alive "$CTLD_PID" slurmctld; then
        log "slurmctld already running (pid $(<"$CTLD_PID"))"
    else
        rm -f "$CTLD_PID"
        rotate "$SLURM_DIR/slurmctld.log" "$SLURM_DIR/slurmctld.stderr"
        log "starting slurmctld"
        # Daemonizes itself and writes SlurmctldPidFile.
        slurmctld </dev/null >>"$SLURM_DIR/slurmctld.stderr" 2>&1 || fail "slurmctld exited with status $?"
        STARTED+=("$CTLD_PID")
        wait_for "$WAIT" "slurmctld pid file" test -s "$CTLD_PID"
    fi
    wait_for "$WAIT" "slurmctld to answer 'scontrol ping'" \
        bash -c 'scontrol ping | grep -q "is UP"'

    if pid_alive "$SLURMD_PID" slurmd; then
        log "slurmd already running (pid $(<"$SLURMD_PID"))"
    else
        rm -f "$SLURMD_PID"
        rotate "$SLURM_DIR/slurmd.log" "$SLURM_DIR/slurmd.stderr"
        log "starting slurmd"
        slurmd </dev/null >>"$SLURM_DIR/slurmd.stderr" 2>&1 || fail "slurmd exited with status $?"
        STARTED+=("$SLURMD_PID")
        wait_for "$WAIT" "slurmd pid file" test -s "$SLURMD_PID"
    fi
fi
export SLURM_CONF="$CONF"

# Usable: idle, or busy with jobs when this is a re-run against a cluster in use.
USABLE='^(idle|mixed|allocated|completing)$'
# A node drained in the saved state (e.g. by an admin, or after a crash) is not returned
# to service by ReturnToService=2: resume it once, then wait again.
# shellcheck disable=SC2016  # $1 is expanded by the inner bash
node_wait='while :; do
    st=$(sinfo -h -o %T 2>/dev/null || true)
    grep -Eqx "$1" <<<"$st" && exit 0
    grep -q drain <<<"$st" && exit 3
    sleep 1
done'
rc=0
{ timeout -s KILL "$WAIT" bash -c "$node_wait" _ "$USABLE"; } 2>/dev/null || rc=$?
if [[ $rc -eq 3 ]]; then
    log "node is $(sinfo -h -o %T 2>/dev/null || true); 'scontrol update NodeName=$HOST State=RESUME'"
    scontrol update NodeName="$HOST" State=RESUME >&2 || true
    rc=0
    { timeout -s KILL "$WAIT" bash -c "$node_wait" _ "$USABLE"; } 2>/dev/null || rc=$?
fi
[[ $rc -eq 0 ]] || fail "node not idle after ${WAIT}s (sinfo state: '$(sinfo -h -o %T 2>/dev/null || true)')"
pid_alive "$CTLD_PID" slurmctld || fail "slurmctld died"
pid_alive "$SLURMD_PID" slurmd || fail "slurmd died"
T_START=$((SECONDS - T1))

conf_hint=""
[[ "$CONF" != /etc/slurm/slurm.conf ]] && conf_hint="export SLURM_CONF=$CONF
  "
cat <<EOF
SLURM is up (install ${T_INSTALL} s, daemon start ${T_START} s).
  node:      $(sinfo -h -N -o '%N %T cpus=%c mem=%mMB partition=%P')
  state:     $STATE (pid files), logs in $SLURM_DIR and $MUNGE_DIR
  config:    $CONF
Use it (no accounting database: --slurm-status-command squeue is required):
  ${conf_hint}source .venv/bin/activate
  snakemake --workflow-profile profiles/slurm --slurm-status-command squeue --cores 2 \\
      --default-resources slurm_partition=debug runtime=10 mem_mb=500 \\
      --set-resources extract_features:gpu=0 extract_features:slurm_partition=debug \\
                      train_small_clip:gpu=0 train_small_clip:slurm_partition=debug
  (no GPU and no 'gpu' partition here; details in cluster/README.md)
Smoke test: CLIPBIAS_SLURM=1 .venv/bin/pytest -m slurm tests/integration/test_slurm_smoke.py
Stop it:    cluster/slurm-down.sh
EOF
