#!/bin/sh
# The syn2mas sequence for a Kubernetes Job or a compose service, one step after another:
#
#   check  ->  migrate --dry-run  ->  migrate  ->  verify
#
# and stops at the first step that fails, exiting with that step's code, so the pod's (or the
# container's) exit code is syn2mas's own:
#   0   every step passed
#   10  check errors (or rows `migrate` refused, or `verify` found differences): nothing changed
#   11  check warnings only: review them, then set SYN2MAS_ALLOW_WARNINGS=true
#   143 stopped by SIGTERM (Kubernetes, `docker stop`): rolled back (130 SIGINT, 129 SIGHUP)
#   1   anything else (configuration, connection, a failed migration: MAS left as it was)
#
# Environment (all optional):
#   SYN2MAS_STEPS           the steps to run, in order (default "check dry-run migrate verify";
#                           "check dry-run" for a rehearsal while Synapse still runs; check
#                           then warns W-synapse-sessions, so a rehearsal needs
#                           SYN2MAS_ALLOW_WARNINGS=true, which never lets migrate run next to
#                           a connected Synapse: that refusal is exit 1)
#   SYN2MAS_ALLOW_WARNINGS  "true": warnings do not stop the sequence, and the migrate steps get
#                           --allow-warnings (errors always stop it)
#   SYN2MAS_ARGS            more arguments for every step, split on spaces
#                           (e.g. "--log-format json", "--ignore-missing-auth-providers")
#   SYN2MAS_MIGRATE_ARGS    more arguments for both migrate steps (e.g. "--rebuild-sessions 4")
#   MAS_CONFIG_FILE         default /config/mas.yaml
#   SYNAPSE_CONFIG_FILE     default /config/homeserver.yaml
#   SYN2MAS_BIN             default syn2mas (from PATH)
#
# As PID 1 of its container this shell passes SIGTERM and SIGINT on to the running step, waits
# for its rollback and exits with its code (143 / 130).
set -u

MAS_CONFIG_FILE="${MAS_CONFIG_FILE:-/config/mas.yaml}"
SYNAPSE_CONFIG_FILE="${SYNAPSE_CONFIG_FILE:-/config/homeserver.yaml}"
STEPS="${SYN2MAS_STEPS:-check dry-run migrate verify}"
ALLOW_WARNINGS="${SYN2MAS_ALLOW_WARNINGS:-false}"
SYN2MAS="${SYN2MAS_BIN:-syn2mas}"

log() { echo "syn2mas-steps: $*" >&2; }

child=""
forward() {
    if [ -n "$child" ]; then
        log "received SIG$1: passing it on to syn2mas (pid $child) and waiting for its rollback"
        kill "-$1" "$child" 2>/dev/null
    fi
}
trap 'forward TERM' TERM
trap 'forward INT' INT

meaning() {
    case "$1" in
        0) echo "ok" ;;
        10) echo "errors: nothing was changed" ;;
        11) echo "warnings: review them, then set SYN2MAS_ALLOW_WARNINGS=true" ;;
        130) echo "interrupted by SIGINT: rolled back" ;;
        143) echo "stopped by SIGTERM: rolled back" ;;
        129) echo "stopped by SIGHUP: rolled back" ;;
        *) echo "failed" ;;
    esac
}

case "$ALLOW_WARNINGS" in
    true|yes|1) allow=1 ;;
    false|no|0|"") allow=0 ;;
    *) log "SYN2MAS_ALLOW_WARNINGS must be true or false, not '$ALLOW_WARNINGS'"; exit 1 ;;
esac
migrate_flags="${SYN2MAS_MIGRATE_ARGS:-}"
[ "$allow" = 1 ] && migrate_flags="--allow-warnings $migrate_flags"

# Every step name is checked before the first one runs.
for step in $STEPS; do
    case "$step" in
        check|dry-run|migrate|verify) ;;
        *) log "unknown step '$step' in SYN2MAS_STEPS (check, dry-run, migrate, verify)"; exit 1 ;;
    esac
done

for step in $STEPS; do
    case "$step" in
        check) args="check" ;;
        dry-run) args="migrate --dry-run $migrate_flags" ;;
        migrate) args="migrate $migrate_flags" ;;
        verify) args="verify" ;;
    esac
    log "step $step: syn2mas $args"
    # shellcheck disable=SC2086 # the argument lists are split on purpose
    "$SYN2MAS" -c "$MAS_CONFIG_FILE" --synapse-config "$SYNAPSE_CONFIG_FILE" ${SYN2MAS_ARGS:-} $args &
    child=$!
    # `wait` returns early when a trapped signal arrives; the step is then still running its
    # rollback (or is a zombie not yet reaped): wait again until it is gone.
    while :; do
        wait "$child"
        rc=$?
        kill -0 "$child" 2>/dev/null || break
    done
    child=""
    if [ "$rc" = 11 ] && [ "$step" = check ] && [ "$allow" = 1 ]; then
        log "step $step: exit 11 (warnings), accepted (SYN2MAS_ALLOW_WARNINGS=true)"
        continue
    fi
    if [ "$rc" != 0 ]; then
        log "step $step: exit $rc ($(meaning "$rc")); stopping"
        exit "$rc"
    fi
    log "step $step: exit 0"
done
log "done: $STEPS"
exit 0
