#!/usr/bin/env bash
# Installs Open MPI for the data-parallel tests (`cargo test --features
# mpi`, tests/cli/dist.rs): the library and headers the `mpi` crate links
# against, libclang for its generated bindings, and `mpirun`.
#
# .ci/run calls every tools/ci-setup-*.sh before the tests; this one is
# idempotent and needs root or sudo (Debian/Ubuntu apt). .ci/run sets
# GPURT_REQUIRE_MPI=1 so that the tests fail rather than skip without it.
set -euo pipefail
exec "$(dirname "$0")/apt-install.sh" ci-setup-mpi libopenmpi-dev openmpi-bin libclang-dev
