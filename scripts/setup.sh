#!/usr/bin/env bash
# `make setup`: the whole environment in .venv, idempotent and quick when nothing changed.
#  1. .venv with Python 3.11
#  2. the pinned ML stack, ROS 2 Kilted wheels, colcon and dev tools (skipped when the
#     requirement files are unchanged since the last successful install)
#  3. the ROS wheels' CMake files pointed at this venv's Python (scripts/fix_ros_wheel_cmake.py)
#  4. vision_msgs built into .ros_underlay when no installation provides it, and rebuilt
#     when ros_deps/vision_msgs or the ROS wheel requirements changed since it was built
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
venv="$root/.venv"

python_bin=${PYTHON:-}
if [ -z "$python_bin" ]; then
  python_bin=$(command -v python3.11 || command -v python3 || true)
fi
if [ -z "$python_bin" ] || ! "$python_bin" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "setup: Python 3.11 is required (the ROS 2 wheels are cp311); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv with $("$python_bin" --version)"
  "$python_bin" -m venv "$venv"
fi

stamp="$venv/.tokenmask-requirements.sha256"
wanted=$(cat requirements/*.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  echo "setup: installing pinned requirements (torch, timm, onnxruntime, ROS 2 Kilted wheels, colcon)"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --progress-bar off -c requirements/constraints.txt \
    -r requirements/ml.txt -r requirements/ros.txt -r requirements/ros-build.txt -r requirements/dev.txt
  # Not with the others: see requirements/eval.txt for why --no-deps.
  "$venv/bin/python" -m pip install --progress-bar off --no-deps -c requirements/constraints.txt \
    -r requirements/eval.txt
  echo "$wanted" > "$stamp"
else
  echo "setup: requirements already installed in $venv"
fi

"$venv/bin/python" scripts/fix_ros_wheel_cmake.py --prefix "$venv"

# shellcheck disable=SC1091
. scripts/ros_env.sh
# Our underlay is rebuilt when its sources or the ROS wheels changed (stamp below); without
# an underlay, a vision_msgs that already has every type we publish (a real ROS install) is used.
underlay_stamp=.ros_underlay/.tokenmask-vision_msgs.sha256
underlay_wanted=$(find ros_deps/vision_msgs requirements/ros.txt requirements/ros-build.txt -type f \
  | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1)
has_vision_msgs() { python -c 'from vision_msgs.msg import Detection2DArray, Detection3DArray, LabelInfo' 2>/dev/null; }
if [ -d .ros_underlay ] && [ "$(cat "$underlay_stamp" 2>/dev/null)" = "$underlay_wanted" ] && has_vision_msgs; then
  echo "setup: vision_msgs underlay is up to date"
elif [ ! -d .ros_underlay ] && has_vision_msgs; then
  echo "setup: vision_msgs is importable"
else
  echo "setup: building vision_msgs into .ros_underlay (no wheel exists for it)"
  rm -rf .ros_underlay
  colcon --log-base .ros_underlay/log build \
    --paths ros_deps/vision_msgs \
    --build-base .ros_underlay/build --install-base .ros_underlay/install \
    --event-handlers console_cohesion- summary+ \
    --cmake-args -DBUILD_TESTING=OFF "-DPython3_EXECUTABLE=$venv/bin/python"
  . scripts/ros_env.sh
  has_vision_msgs || { echo "setup: vision_msgs built but does not import" >&2; exit 1; }
  echo "$underlay_wanted" > "$underlay_stamp"
fi
echo "setup: done. Use it with: source scripts/ros_env.sh"
