#!/usr/bin/env bash
# `make test`: colcon test of this package after `make build`, then the per-test report.
# Exits non-zero when the package is not built, pytest fails, or any test result is a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ ! -f install/local_setup.bash ]; then
  echo "make test: no install/ here: run \`make build\` first (\`make test\` does)" >&2
  exit 1
fi
# shellcheck disable=SC1091
. scripts/ros_env.sh  # also sources install/local_setup.bash

export TOKENMASK_REQUIRE_INSTALLED=1  # tests must use the installed console scripts
colcon --log-base log test --paths . --event-handlers console_direct+ summary+ \
  --pytest-args -v --durations=10
test_rc=$?
colcon test-result --test-result-base build/tokenmask_ros --verbose
result_rc=$?
if [ $test_rc -ne 0 ] || [ $result_rc -ne 0 ]; then
  echo "make test: FAILED (colcon test exit $test_rc, test-result exit $result_rc)" >&2
  exit 1
fi
echo "make test: all tests passed"
