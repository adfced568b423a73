# syn2mas container image: build with cargo, run on a small Debian with OpenSSL and CA certificates.
#
#   docker build --build-arg GIT_COMMIT="$(git rev-parse --short=12 HEAD)" -t syn2mas .
#   docker run --rm --network host -v "$PWD/configs:/config:ro" syn2mas \
#       -c /config/mas.yaml --synapse-config /config/homeserver.yaml check
#
# Both base images can be swapped with build arguments (a mirror, a pinned digest). tests/container
# builds and runs this file; where Docker Hub is not reachable it makes images of the same names
# locally (debootstrap) first. Works with the classic builder and with BuildKit (no BuildKit-only
# syntax, no `# syntax=` line, which would fetch a frontend image).
ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---- build --------------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS build
# native-tls links OpenSSL: headers and pkg-config to build, libssl3 to run.
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src src
COPY sql sql
# The manifest names the benchmarks, and `syn2mas demo` embeds the fixtures.
COPY benches benches
COPY fixtures fixtures
# The build context has no .git: the commit for `syn2mas --version` comes in as an argument
# ("unknown" when not given). CARGO_BUILD_JOBS limits the build's parallelism when set.
ARG GIT_COMMIT=unknown
ARG CARGO_BUILD_JOBS
ENV SYN2MAS_GIT_COMMIT=${GIT_COMMIT} \
    CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols
RUN cargo build --release --locked --bin syn2mas \
 && install -m 0755 target/release/syn2mas /usr/local/bin/syn2mas \
 && /usr/local/bin/syn2mas --version

# ---- runtime ------------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE}
# libssl3: TLS to PostgreSQL (sslmode prefer/require/verify-*); ca-certificates: the system roots
# that verify-ca/verify-full use when no sslrootcert is given. glibc's NSS (files + dns, part of
# the base image) resolves service names such as postgres.matrix.svc.cluster.local.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/debconf/*-old /var/log/apt /var/log/dpkg.log \
 && groupadd --system --gid 10001 syn2mas \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin syn2mas
COPY --from=build /usr/local/bin/syn2mas /usr/local/bin/syn2mas
# Numeric, so Kubernetes' runAsNonRoot can check it. `migrate` spills to TMPDIR (/tmp, about
# 0.55 GB per million users): mount a volume there when the root filesystem is read-only.
USER 10001:10001
ENV TMPDIR=/tmp
ENTRYPOINT ["syn2mas"]
CMD ["--help"]
