"""Helpers for programs that run the package's nodes: find their console scripts, spin an
executor or node until a condition holds (demo, node benchmark, tests)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

CONSOLE_SCRIPTS = {'image_source': 'tokenmask_ros.ros.image_source',
                   'segment_node': 'tokenmask_ros.ros.segment_node',
                   'tokenmask': 'tokenmask_ros.cli'}


def installed_script(name: str) -> Path | None:
    """The installed console script ``name`` (``lib/tokenmask_ros/<name>`` of the package's
    ament prefix), or None when the package is not installed."""
    try:
        from ament_index_python.packages import get_package_prefix

        script = Path(get_package_prefix('tokenmask_ros')) / 'lib' / 'tokenmask_ros' / name
    except (ImportError, LookupError):
        return None
    return script if script.is_file() else None


def console_command(name: str) -> list[str]:
    """Command line of console script ``name``: the installed script, else ``python -m``."""
    script = installed_script(name)
    return [str(script)] if script else [sys.executable, '-m', CONSOLE_SCRIPTS[name]]


def spin_until(spinner, done: Callable[[], object], timeout: float) -> bool:
    """Spin ``spinner`` (an executor, or a node for ``rclpy.spin_once``) in 50 ms slices
    until ``done()`` is true or ``timeout`` seconds pass; returns ``bool(done())``."""
    if hasattr(spinner, 'spin_once'):
        spin_once = spinner.spin_once
    else:
        import rclpy

        def spin_once(timeout_sec):
            rclpy.spin_once(spinner, timeout_sec=timeout_sec)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return True
        spin_once(timeout_sec=0.05)
    return bool(done())
