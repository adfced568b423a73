#!/usr/bin/env bash
# Builds the container image from the repository's Dockerfile and runs it against the test
# PostgreSQL on the bundled fixture: --version (with the git commit), the image's user, `check`,
# a `migrate` stopped by `docker stop` while its swap waits for a lock the script holds (SIGTERM
# to PID 1: rolled back, exit 143, MAS untouched),
# then `migrate` (exit 0, rows in MAS equal to what it reports, progress lines in the log) and
# `verify` (exit 0). Not part of .ci/run (see README, "Container image"): it takes minutes and
# needs a Docker daemon.
#
#   bash tests/container/run.sh            # exit 0 passed, 1 failed, 77 skipped (says why)
#
# Environment:
#   PGHOST/PGPORT/PGUSER   the test PostgreSQL (default 127.0.0.1 / 5432 / postgres, trust auth);
#                          reached from the container over the host network
#   IMAGE                  tag to build (default syn2mas:test)
#   CARGO_BUILD_JOBS       parallelism of the cargo build inside the image (default 1)
#   SYN2MAS_CONTAINER_CACHE  where the debootstrap root filesystems are kept
#                          (default /var/tmp/syn2mas-container; never inside the repository)
#   SKIP_BUILD=1           reuse an existing $IMAGE
#
# The Dockerfile's base images (rust:1.95-slim-bookworm, debian:bookworm-slim) are used when the
# daemon has them or can pull them. Where it cannot (no Docker Hub), images of the same names are
# made locally: Debian bookworm with debootstrap (--variant=minbase) and `docker import`, and for
# the build image the host's own Rust toolchain (same version), gcc and the host's extra CA
# certificates (/usr/local/share/ca-certificates) on top. They carry the label
# org.syn2mas.local-base=debootstrap.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"

IMAGE="${IMAGE:-syn2mas:test}"
CACHE="${SYN2MAS_CONTAINER_CACHE:-/var/tmp/syn2mas-container}"
PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-postgres}"
export PGHOST PGPORT PGUSER
RUST_IMAGE="$(sed -n 's/^ARG RUST_IMAGE=//p' Dockerfile)"
RUNTIME_IMAGE="$(sed -n 's/^ARG RUNTIME_IMAGE=//p' Dockerfile)"
SUFFIX="$$_$RANDOM"
SYNAPSE_DB="syn2mas_container_synapse_$SUFFIX"
MAS_DB="syn2mas_container_mas_$SUFFIX"
WORK="$(mktemp -d)"
CONTAINERS=()
FAILED=0

say() { printf '\n==> %s\n' "$*"; }
skip() { printf '\nSKIPPED: %s\n' "$*" >&2; exit 77; }
fail() { printf 'FAIL: %s\n' "$*" >&2; FAILED=1; }
ok() { printf 'ok: %s\n' "$*"; }

cleanup() {
    for c in "${CONTAINERS[@]}"; do docker rm -f "$c" >/dev/null 2>&1 || true; done
    for db in "$SYNAPSE_DB" "$MAS_DB"; do
        psql -X -q -d postgres -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

# ---- preconditions -------------------------------------------------------------------------------
command -v docker >/dev/null || skip "no docker command (apt-get install docker.io)"
docker info >/dev/null 2>&1 || skip "no Docker daemon answers (start dockerd)"
command -v psql >/dev/null || skip "no psql (apt-get install postgresql-client)"
psql -X -q -d postgres -Atc 'SELECT 1' >/dev/null 2>&1 \
    || skip "cannot log in to PostgreSQL as $PGUSER on $PGHOST:$PGPORT"
[ -n "$RUST_IMAGE" ] && [ -n "$RUNTIME_IMAGE" ] || { echo "cannot read the base images from Dockerfile" >&2; exit 1; }

# ---- base images -----------------------------------------------------------------------------------
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

debian_rootfs() {
    local dir="$CACHE/rootfs-bookworm"
    if [ ! -x "$dir/bin/sh" ] || [ ! -f "$dir/.complete" ]; then
        command -v debootstrap >/dev/null || skip "$RUNTIME_IMAGE cannot be pulled and debootstrap is missing (apt-get install debootstrap)"
        say "debootstrap --variant=minbase bookworm into $dir" >&2
        rm -rf "$dir"
        mkdir -p "$CACHE"
        debootstrap --variant=minbase bookworm "$dir" http://deb.debian.org/debian >"$CACHE/debootstrap.log" 2>&1 \
            || { tail -20 "$CACHE/debootstrap.log" >&2; echo "debootstrap failed" >&2; exit 1; }
        touch "$dir/.complete"
    fi
    printf '%s' "$dir"
}

make_runtime_image() {
    local rootfs
    rootfs="$(debian_rootfs)"
    say "importing $rootfs as $RUNTIME_IMAGE"
    # Slim it as Debian's -slim images are: no documentation, manuals or translations (now or
    # from later installs), no package lists or caches.
    mkdir -p "$rootfs/etc/dpkg/dpkg.cfg.d" "$rootfs/etc/apt/apt.conf.d"
    printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
        'path-exclude /usr/share/man/*' 'path-exclude /usr/share/groff/*' 'path-exclude /usr/share/info/*' \
        'path-exclude /usr/share/lintian/*' 'path-exclude /usr/share/linda/*' 'path-exclude /usr/share/locale/*' \
        >"$rootfs/etc/dpkg/dpkg.cfg.d/syn2mas-slim"
    printf '%s\n' 'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };' \
        'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };' \
        'Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";' >"$rootfs/etc/apt/apt.conf.d/syn2mas-clean"
    find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
    rm -rf "$rootfs/usr/share/man/"* "$rootfs/usr/share/groff/"* "$rootfs/usr/share/info/"* \
        "$rootfs/usr/share/lintian/"* "$rootfs/usr/share/locale/"*
    rm -rf "$rootfs/var/lib/apt/lists/"* "$rootfs/var/cache/apt/"*.bin "$rootfs/var/cache/apt/archives/"*.deb \
        "$rootfs/var/log/"*.log "$rootfs/var/log/apt/"*
    tar -C "$rootfs" --exclude=./.complete --exclude='./proc/*' --exclude='./sys/*' --exclude='./dev/*' -c . \
        | docker import --change 'CMD ["bash"]' --change 'LABEL org.syn2mas.local-base=debootstrap' \
            - "$RUNTIME_IMAGE" >/dev/null
}

make_rust_image() {
    local sysroot version want ctx
    sysroot="$(rustc --print sysroot)"
    version="$(rustc --version | awk '{print $2}')"
    want="$(printf '%s' "$RUST_IMAGE" | sed -E 's/^rust:([0-9.]+).*/\1/')"
    case "$version" in
        "$want"|"$want".*) ;;
        *) echo "warning: the host's Rust is $version, the Dockerfile asks for $RUST_IMAGE; using $version under that name" >&2 ;;
    esac
    have_image "$RUNTIME_IMAGE" || make_runtime_image
    ctx="$WORK/rust-image"
    mkdir -p "$ctx/rust"
    say "making $RUST_IMAGE from $RUNTIME_IMAGE + gcc + the host's Rust $version ($sysroot)"
    cp -a "$sysroot/bin" "$ctx/rust/"
    mkdir -p "$ctx/rust/lib"
    # Everything but the sources and docs (rustc, cargo, librustc_driver, the std rlibs).
    (cd "$sysroot/lib" && tar --exclude=./rustlib/src --exclude=./rustlib/rustc-src -c .) | tar -C "$ctx/rust/lib" -x
    # The host's own extra CA certificates (a TLS-inspecting proxy in front of crates.io, say):
    # cargo inside the build must trust what cargo on the host trusts.
    mkdir -p "$ctx/ca"
    cp /usr/local/share/ca-certificates/*.crt "$ctx/ca/" 2>/dev/null || true
    cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM $RUNTIME_IMAGE
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev \\
 && rm -rf /var/lib/apt/lists/*
COPY ca /usr/local/share/ca-certificates
RUN update-ca-certificates
COPY rust /usr/local/rust
ENV CARGO_HOME=/usr/local/cargo PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LABEL org.syn2mas.local-base=debootstrap
RUN rustc --version && cargo --version
DOCKERFILE
    docker build --network host -q -t "$RUST_IMAGE" "$ctx" >/dev/null
    rm -rf "$ctx"
}

ensure_base() {
    local name="$1" maker="$2"
    if have_image "$name"; then
        ok "base image $name present ($(docker image inspect -f '{{index .Config.Labels "org.syn2mas.local-base"}}' "$name" 2>/dev/null | sed 's/^$/pulled/;s/<no value>/pulled/'))"
    elif timeout 60 docker pull -q "$name" >/dev/null 2>&1; then
        ok "base image $name pulled"
    else
        echo "cannot pull $name: making it locally" >&2
        "$maker"
    fi
}

if [ "${SKIP_BUILD:-}" != 1 ]; then
    ensure_base "$RUNTIME_IMAGE" make_runtime_image
    ensure_base "$RUST_IMAGE" make_rust_image

    # ---- the image -------------------------------------------------------------------------------
    COMMIT="$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
    say "docker build -t $IMAGE (commit $COMMIT, CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1})"
    start=$SECONDS
    docker build --network host \
        --build-arg GIT_COMMIT="$COMMIT" --build-arg CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}" \
        -t "$IMAGE" . >"$WORK/build.log" 2>&1 \
        || { tail -40 "$WORK/build.log" >&2; echo "FAIL: docker build" >&2; exit 1; }
    echo "built in $((SECONDS - start)) s"
else
    COMMIT="$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
    have_image "$IMAGE" || { echo "SKIP_BUILD=1 but there is no $IMAGE" >&2; exit 1; }
fi

size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
echo "image $IMAGE: $((size / 1000000)) MB ($size bytes)"
docker history --format '{{.Size}}\t{{.CreatedBy}}' "$IMAGE" | cut -c1-110

say "image facts"
user="$(docker image inspect -f '{{.Config.User}}' "$IMAGE")"
[ "$user" = "10001:10001" ] && ok "USER $user" || fail "USER is '$user', expected 10001:10001"
entry="$(docker image inspect -f '{{json .Config.Entrypoint}}' "$IMAGE")"
[ "$entry" = '["syn2mas"]' ] && ok "ENTRYPOINT $entry" || fail "ENTRYPOINT is $entry"
id_out="$(docker run --rm --entrypoint id "$IMAGE")"
case "$id_out" in uid=10001*) ok "runs as $id_out" ;; *) fail "runs as '$id_out'" ;; esac
version="$(docker run --rm "$IMAGE" --version)"
echo "$version"
case "$version" in
    *"(commit $COMMIT)") ok "--version names commit $COMMIT" ;;
    *) fail "--version '$version' does not end in (commit $COMMIT)" ;;
esac
ldd_out="$(docker run --rm --entrypoint ldd "$IMAGE" /usr/local/bin/syn2mas)"
if grep -q "not found" <<<"$ldd_out"; then fail "missing libraries: $ldd_out"; else ok "every shared library resolves ($(grep -c '=>' <<<"$ldd_out") linked)"; fi
cas="$(docker run --rm --entrypoint sh "$IMAGE" -c 'grep -c "BEGIN CERTIFICATE" /etc/ssl/certs/ca-certificates.crt' || true)"
[ "${cas:-0}" -gt 100 ] && ok "CA bundle with $cas certificates" || fail "no CA bundle (/etc/ssl/certs/ca-certificates.crt: '$cas')"

# ---- fixture databases -----------------------------------------------------------------------------
say "fixture databases $SYNAPSE_DB, $MAS_DB"
load() {
    local db="$1"; shift
    psql -X -q -d postgres -c "CREATE DATABASE \"$db\" TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'" >/dev/null
    for f in "$@"; do
        PGOPTIONS='-c client_min_messages=warning' psql -X -q -v ON_ERROR_STOP=1 -d "$db" -f "$f" >/dev/null
    done
}
load "$SYNAPSE_DB" fixtures/synapse/schema.sql fixtures/synapse/data.sql
load "$MAS_DB" fixtures/mas/schema.sql fixtures/mas/providers.sql

mkdir -p "$WORK/config"
# Synapse by IP, MAS by the name "localhost": the container resolves it through glibc's NSS.
sed -e "s/^\(    host:\).*/\1 $PGHOST/" -e "s/^\(    port:\).*/\1 $PGPORT/" -e "s/^\(    user:\).*/\1 $PGUSER/" \
    -e "s/^\(    dbname:\).*/\1 $SYNAPSE_DB/" fixtures/synapse/homeserver.yaml >"$WORK/config/homeserver.yaml"
mas_host="$PGHOST"; [ "$PGHOST" = 127.0.0.1 ] && mas_host=localhost
sed -e "s|^\(  uri:\).*|\1 \"postgresql://$PGUSER@$mas_host:$PGPORT/$MAS_DB\"|" fixtures/mas/config.yaml >"$WORK/config/mas.yaml"
grep -q "dbname: $SYNAPSE_DB" "$WORK/config/homeserver.yaml" || { echo "could not point homeserver.yaml at $SYNAPSE_DB" >&2; exit 1; }
grep -q "/$MAS_DB\"" "$WORK/config/mas.yaml" || { echo "could not point mas.yaml at $MAS_DB" >&2; exit 1; }
chmod -R a+rX "$WORK"

run() {  # run NAME [docker options --] syn2mas args...; prints the exit code
    local name="syn2mas-test-$1-$SUFFIX"; shift
    local opts=()
    while [ "$#" -gt 0 ] && [ "$1" != -- ]; do opts+=("$1"); shift; done
    shift
    CONTAINERS+=("$name")
    docker run --name "$name" --network host -v "$WORK/config:/config:ro" "${opts[@]}" "$IMAGE" \
        -c /config/mas.yaml --synapse-config /config/homeserver.yaml "$@" \
        >"$WORK/$name.out" 2>"$WORK/$name.err" && echo 0 || echo $?
}
mas_rows() { psql -X -q -d "$MAS_DB" -Atc "SELECT (SELECT count(*) FROM users) + (SELECT count(*) FROM compat_sessions) + (SELECT count(*) FROM compat_access_tokens)"; }
shadows() { psql -X -q -d "$MAS_DB" -Atc "SELECT count(*) FROM pg_class WHERE relname LIKE 'syn2mas_new_%'"; }

# The fixture has warnings on purpose (README of fixtures/synapse): check must say 11, and the
# container must agree with the binary cargo builds on the host when there is one.
say "check"
rc=$(run check -- check --json)
echo "exit $rc"; tail -5 "$WORK/syn2mas-test-check-$SUFFIX.err"
[ "$rc" = 11 ] && ok "check exit 11 (warnings)" || fail "check exit $rc, expected 11"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["exit_code"]==11 and d["warnings"] and not d["errors"], d["exit_code"]' \
    "$WORK/syn2mas-test-check-$SUFFIX.out" && ok "check --json: warnings, no errors" || fail "check --json output"

# The image has no test hooks (SYN2MAS_TEST_PAUSE is compiled out of release builds): to stop a
# run in the middle, a session of ours holds ACCESS SHARE on MAS's `users`, so the final swap
# (LOCK TABLE … ACCESS EXCLUSIVE, lock_timeout 60 s) waits with every shadow table built.
HOLDER=""
hold_mas_users() {
    psql -X -q -d "$MAS_DB" -c "BEGIN; LOCK TABLE users IN ACCESS SHARE MODE; SELECT pg_sleep(300); COMMIT" >/dev/null 2>&1 &
    HOLDER=$!
    for _ in $(seq 1 50); do
        [ "$(psql -X -q -d postgres -Atc "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE a.datname = '$MAS_DB' AND a.query LIKE '%pg_sleep(300)%' AND l.granted AND l.mode = 'AccessShareLock'")" -gt 0 ] && return 0
        sleep 0.2
    done
    echo "could not take the lock on $MAS_DB.users" >&2; exit 1
}
release_mas_users() {
    psql -X -q -d postgres -Atc "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '$MAS_DB' AND query LIKE '%pg_sleep(300)%' AND pid <> pg_backend_pid()" >/dev/null
    [ -n "$HOLDER" ] && wait "$HOLDER" 2>/dev/null || true
    HOLDER=""
}
wait_for_swap() {  # until a session of MAS waits for a lock in LOCK TABLE (the swap)
    for _ in $(seq 1 120); do
        [ "$(psql -X -q -d postgres -Atc "SELECT count(*) FROM pg_stat_activity WHERE datname = '$MAS_DB' AND wait_event_type = 'Lock' AND query LIKE 'LOCK TABLE%'")" -gt 0 ] && return 0
        sleep 0.5
    done
    return 1
}

say "migrate, stopped by docker stop (SIGTERM to PID 1) while its swap waits"
hold_mas_users
name="syn2mas-test-term-$SUFFIX"; CONTAINERS+=("$name")
docker run -d --name "$name" --network host -v "$WORK/config:/config:ro" "$IMAGE" \
    -c /config/mas.yaml --synapse-config /config/homeserver.yaml migrate --allow-warnings >/dev/null
wait_for_swap && ok "the swap waits for our lock" || fail "migrate never reached the swap"
[ "$(shadows)" -gt 0 ] && ok "waiting with shadow tables built" || fail "no shadow tables while waiting"
start=$SECONDS
docker stop -t 60 "$name" >/dev/null
took=$((SECONDS - start))
rc=$(docker inspect -f '{{.State.ExitCode}}' "$name")
docker logs "$name" 2>&1 | tail -3
[ "$rc" = 143 ] && ok "exit 143 after SIGTERM, in $took s" || fail "exit $rc after docker stop (expected 143; 137 means SIGTERM was ignored)"
docker logs "$name" 2>&1 | grep -q "rolled back" && ok "says it rolled back" || fail "no rollback message"
[ "$(shadows)" = 0 ] && ok "no shadow tables left" || fail "shadow tables left after SIGTERM"
release_mas_users
[ "$(mas_rows)" = 0 ] && ok "MAS untouched" || fail "MAS has rows after an interrupted run"

say "migrate"
rc=$(run migrate -- migrate --allow-warnings --json)
echo "exit $rc"; tail -12 "$WORK/syn2mas-test-migrate-$SUFFIX.err"
[ "$rc" = 0 ] && ok "migrate exit 0" || fail "migrate exit $rc"
grep -q '^.*INFO progress users: done, ' "$WORK/syn2mas-test-migrate-$SUFFIX.err" \
    && ok "non-TTY progress lines in the log" || fail "no 'progress users: done' line on stderr"
python3 - "$WORK/syn2mas-test-migrate-$SUFFIX.out" "$MAS_DB" <<'PY' && ok "MAS holds exactly the rows migrate reports" || fail "MAS rows differ from migrate's report"
import json, subprocess, sys
doc = json.load(open(sys.argv[1]))["migrate"]
assert not doc["dry_run"]
for e in doc["entities"]:
    assert e["read"] == e["migrated"] + sum(e["skipped"].values()), e
for table, n in doc["mas_rows"].items():
    got = int(subprocess.check_output(["psql", "-X", "-q", "-d", sys.argv[2], "-Atc", f"SELECT count(*) FROM {table}"]).strip())
    assert got == n, (table, got, n)
    print(f"  {table}: {got}")
assert doc["mas_rows"]["users"] > 0
PY

say "verify"
rc=$(run verify -- verify)
tail -3 "$WORK/syn2mas-test-verify-$SUFFIX.out"
[ "$rc" = 0 ] && ok "verify exit 0" || fail "verify exit $rc"

say "a second migrate is refused (MAS not empty)"
rc=$(run again -- migrate --allow-warnings)
[ "$rc" = 10 ] && ok "exit 10" || fail "second migrate exit $rc, expected 10"

# ---- the Kubernetes / compose step script, as PID 1 of the image --------------------------------
# As the Job runs it: /bin/sh /steps/steps.sh, read-only root filesystem, /tmp a volume.
steps_run() {  # steps_run NAME [docker run options...]; prints the exit code
    local name="syn2mas-test-$1-$SUFFIX"; shift
    CONTAINERS+=("$name")
    docker run --name "$name" --network host --read-only --tmpfs /tmp:rw,size=64m \
        -v "$WORK/config:/config:ro" -v "$REPO/deploy/kubernetes/steps.sh:/steps/steps.sh:ro" \
        --entrypoint /bin/sh "$@" "$IMAGE" /steps/steps.sh >"$WORK/$name.out" 2>"$WORK/$name.err" \
        && echo 0 || echo $?
}
fresh_mas() {
    psql -X -q -d postgres -c "DROP DATABASE \"$MAS_DB\" WITH (FORCE)" >/dev/null
    load "$MAS_DB" fixtures/mas/schema.sql fixtures/mas/providers.sql
}

say "deploy/kubernetes/steps.sh in the image: stopped by docker stop while migrating"
fresh_mas
hold_mas_users
name="syn2mas-test-steps-term-$SUFFIX"; CONTAINERS+=("$name")
docker run -d --name "$name" --network host --read-only --tmpfs /tmp:rw,size=64m \
    -v "$WORK/config:/config:ro" -v "$REPO/deploy/kubernetes/steps.sh:/steps/steps.sh:ro" \
    -e SYN2MAS_STEPS=migrate -e SYN2MAS_ALLOW_WARNINGS=true \
    --entrypoint /bin/sh "$IMAGE" /steps/steps.sh >/dev/null
wait_for_swap || fail "steps.sh: migrate never reached the swap"
start=$SECONDS
docker stop -t 60 "$name" >/dev/null
rc=$(docker inspect -f '{{.State.ExitCode}}' "$name")
docker logs "$name" 2>&1 | grep "syn2mas-steps:" | tail -3
[ "$rc" = 143 ] && ok "exit 143 after docker stop, in $((SECONDS - start)) s (sh as PID 1 passed SIGTERM on)" \
    || fail "steps.sh exit $rc after docker stop (expected 143; 137 means the signal was not passed on)"
[ "$(shadows)" = 0 ] && [ "$(mas_rows)" = 0 ] && ok "MAS untouched" || fail "MAS changed after an interrupted steps.sh"
release_mas_users

say "deploy/kubernetes/steps.sh in the image: the whole sequence"
rc=$(steps_run steps -e SYN2MAS_ALLOW_WARNINGS=true)
grep "syn2mas-steps:" "$WORK/syn2mas-test-steps-$SUFFIX.err"
[ "$rc" = 0 ] && ok "check, dry-run, migrate, verify: exit 0" || fail "steps.sh exit $rc"
[ "$(grep -c 'syn2mas-steps: step .*: exit [01]' "$WORK/syn2mas-test-steps-$SUFFIX.err")" = 4 ] \
    && ok "four steps ran" || fail "not four steps"
[ "$(mas_rows)" -gt 0 ] && ok "MAS migrated" || fail "MAS empty after steps.sh"

if [ "$FAILED" = 0 ]; then
    say "container test passed"
else
    say "container test FAILED"
    exit 1
fi
