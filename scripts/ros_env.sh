# Source this (bash) to use the pip-installed ROS 2 in .venv and the vision_msgs underlay.
# The ROS 2 wheels install their ament resources under the venv prefix, so ament and CMake
# have to be told to look there; a native /opt/ros install is left untouched when present.
_tm_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_tm_venv="${TOKENMASK_VENV:-$_tm_root/.venv}"
if [ -x "$_tm_venv/bin/python" ]; then
  export VIRTUAL_ENV="$_tm_venv"
  export PATH="$_tm_venv/bin:$PATH"
  export AMENT_PREFIX_PATH="$_tm_venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
  export CMAKE_PREFIX_PATH="$_tm_venv${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
fi
# The vision_msgs underlay, then this workspace once `make build` has made install/: its
# setup puts the package on PYTHONPATH and AMENT_PREFIX_PATH, which the console scripts and
# `ros2 run` / launch need. colcon's setup scripts read unset variables: relax `set -u`.
for _tm_setup in "$_tm_root/.ros_underlay/install/local_setup.bash" \
                 "$_tm_root/install/local_setup.bash"; do
  if [ -f "$_tm_setup" ]; then
    case $- in *u*) _tm_nounset=1; set +u ;; *) _tm_nounset= ;; esac
    # shellcheck disable=SC1090
    . "$_tm_setup"
    [ -n "$_tm_nounset" ] && set -u
    unset _tm_nounset
  fi
done
unset _tm_setup
# The package's console scripts (tokenmask, segment_node, image_source) sit in
# install/tokenmask_ros/lib/tokenmask_ros (where `ros2 run` looks): put them on PATH.
if [ -d "$_tm_root/install/tokenmask_ros/lib/tokenmask_ros" ]; then
  export PATH="$_tm_root/install/tokenmask_ros/lib/tokenmask_ros:$PATH"
fi
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
unset _tm_root _tm_venv
