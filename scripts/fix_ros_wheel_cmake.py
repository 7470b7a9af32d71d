"""Point the ROS 2 wheels' exported CMake targets at this virtual environment's Python.

The ROS 2 message wheels are built in a manylinux container, and their exported CMake
targets hard-code that container's include directories (``/opt/python/cp311-cp311/...``).
CMake then refuses to configure any interface package that depends on them. No packaging
tool rewrites these paths, so this script does it once after ``pip install``; it is
idempotent and prints how many files it changed.
"""

import argparse
import sys
import sysconfig
from pathlib import Path

import numpy

BUILD_PREFIX = '/opt/python/cp311-cp311'
BUILD_PYTHON_INCLUDE = f'{BUILD_PREFIX}/include/python3.11'
BUILD_NUMPY_INCLUDE = f'{BUILD_PREFIX}/lib/python3.11/site-packages/numpy/_core/include'


def rewrite(text: str) -> str:
    """Return ``text`` with the wheel build machine's include dirs replaced by ours."""
    text = text.replace(BUILD_NUMPY_INCLUDE, numpy.get_include())
    return text.replace(BUILD_PYTHON_INCLUDE, sysconfig.get_paths()['include'])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--prefix', type=Path, default=Path(sys.prefix),
                        help='install prefix of the ROS 2 wheels (default: this Python\'s)')
    args = parser.parse_args()
    changed = 0
    for path in sorted(args.prefix.glob('share/*/cmake/*.cmake')):
        text = path.read_text()
        if BUILD_PREFIX not in text:
            continue
        new_text = rewrite(text)
        if new_text != text:
            path.write_text(new_text)
            changed += 1
    print(f'fix_ros_wheel_cmake: rewrote {changed} CMake file(s) under {args.prefix}/share')
    leftovers = [p for p in args.prefix.glob('share/*/cmake/*.cmake')
                 if BUILD_PREFIX in p.read_text()]
    if leftovers:
        print(f'fix_ros_wheel_cmake: unknown {BUILD_PREFIX} paths remain in: '
              + ', '.join(str(p) for p in leftovers), file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
