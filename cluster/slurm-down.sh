#!/usr/bin/env bash
# Stop the single-node SLURM started by cluster/slurm-up.sh: slurmd, slurmctld, munged,
# each by the PID in its pid file under the state folder (never by a process name).
# Idempotent: a missing pid file or a dead process is not an error.
#
# Environment (same as slurm-up.sh):
#   CLIPBIAS_SLURM_STATE   state folder (default /run/clipbias-slurm)
#   SLURM_CONF             slurm.conf used by the cluster (default /etc/slurm/slurm.conf)
#   CLIPBIAS_SLURM_KEEP_JOBS=1   do not scancel jobs still queued/running (default: cancel)
# Logs stay in $CLIPBIAS_SLURM_STATE/{slurm,munge}/ for inspection. The slurm.conf that
# slurm-up.sh wrote is removed once slurmctld and slurmd are stopped (slurm-up.sh writes it
# again): with a slurm.conf naming a controller that is not running, every squeue/sacct call
# waits ~9 s for it, and snakemake-executor-plugin-slurm makes such calls whenever snakemake
# starts, even for a local run. A slurm.conf without slurm-up.sh's marker is never touched.
set -euo pipefail

STATE="${CLIPBIAS_SLURM_STATE:-/run/clipbias-slurm}"
export SLURM_CONF="${SLURM_CONF:-/etc/slurm/slurm.conf}"

log() { printf '[slurm-down] %s\n' "$*" >&2; }

# stop PIDFILE NAME: TERM, wait (bounded), then KILL; only if the pid really is NAME.
stop() {
    local pidfile=$1 name=$2 pid comm
    if [[ ! -s "$pidfile" ]]; then
        log "$name: no pid file ($pidfile), nothing to stop"
        return 0
    fi
    pid=$(<"$pidfile")
    comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
    if [[ ! "$pid" =~ ^[0-9]+$ || "$comm" != "$name" ]]; then
        log "$name: pid $pid from $pidfile is not running (stale pid file removed)"
        rm -f "$pidfile"
        return 0
    fi
    log "$name: stopping pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    if ! timeout -s KILL 20 tail --pid="$pid" -f /dev/null 2>/dev/null; then
        log "$name: pid $pid still alive after 20 s, sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
        timeout -s KILL 5 tail --pid="$pid" -f /dev/null 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

ctld_pid="$STATE/slurm/slurmctld.pid"
if [[ "${CLIPBIAS_SLURM_KEEP_JOBS:-0}" != 1 && -s "$ctld_pid" ]] \
    && [[ "$(cat "/proc/$(<"$ctld_pid")/comm" 2>/dev/null || true)" == slurmctld ]]; then
    # Jobs left running would keep slurmstepd and their payload alive after slurmd stops.
    jobs=$(timeout -s KILL 10 squeue -h -o %i 2>/dev/null || true)
    if [[ -n "$jobs" ]]; then
        log "cancelling jobs still in the queue: $(tr '\n' ' ' <<<"$jobs")"
        # shellcheck disable=SC2086
        timeout -s KILL 10 scancel $jobs || true
        # shellcheck disable=SC2016  # expanded by the inner bash
        timeout -s KILL 30 bash -c 'while [[ -n "$(squeue -h -o %i 2>/dev/null)" ]]; do sleep 1; done' \
            || log "some jobs are still listed after 30 s; stopping anyway"
    fi
fi

stop "$STATE/slurm/slurmd.pid" slurmd
stop "$ctld_pid" slurmctld
stop "$STATE/munge/munged.pid" munged
MARKER="# written by clipbias cluster/slurm-up.sh"
if [[ -e "$SLURM_CONF" ]] && grep -qF "$MARKER" "$SLURM_CONF"; then
    log "removing $SLURM_CONF (written by slurm-up.sh, which writes it again)"
    rm -f "$SLURM_CONF"
fi
log "done (logs kept in $STATE/slurm and $STATE/munge)"
