"""Shared fixtures: one rclpy context per session, an isolated DDS domain, installed scripts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Each pytest process gets its own DDS domain, restricted to this machine, so parallel
# test runs (and other ROS users on the host) cannot hear each other. Set before any
# rclpy context exists; subprocesses inherit it.
os.environ.setdefault('ROS_DOMAIN_ID', str(100 + os.getpid() % 100))
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
# Tests never reach the network: a hub-id-looking name must not start a download.
os.environ.setdefault('HF_HUB_OFFLINE', '1')

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO_ROOT))  # for `training`, a source-tree package that is not installed


@pytest.fixture(scope='session')
def rclpy_context():
    """The default rclpy context, initialised once for the session and shut down at the end."""
    rclpy = pytest.importorskip('rclpy')
    rclpy.init()
    yield rclpy.get_default_context()
    if rclpy.ok():
        rclpy.shutdown()


@pytest.fixture()
def ros_node(rclpy_context, request):
    """A plain node for a test to subscribe or publish with, named after the test."""
    from rclpy.node import Node

    name = 'test_' + ''.join(c if c.isalnum() else '_' for c in request.node.name)[:60]
    node = Node(name)
    yield node
    node.destroy_node()


def installed_executable(name: str) -> list[str]:
    """Command line of one of the package's installed console scripts.

    Under `colcon test` the package is installed and found through the ament index, so the
    test exercises the real entry point; a plain `pytest` run from a source checkout falls
    back to `python -m` on the module behind it.
    """
    from tokenmask_ros.ros.processes import console_command, installed_script

    if installed_script(name) is None and os.environ.get('TOKENMASK_REQUIRE_INSTALLED'):
        pytest.fail(f'console script {name} is not installed (colcon build first)')
    return console_command(name)


def run_command(args: list[str], timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.fixture(scope='session')
def ruff_executable():
    ruff = shutil.which('ruff') or str(Path(sys.executable).parent / 'ruff')
    if not Path(ruff).exists():
        pytest.skip('ruff is not installed (make setup installs it)')
    return ruff


def save_tiny_checkpoint(path: Path, seed: int = 0, **config) -> Path:
    """A random-weight TokenMask checkpoint small enough for a test: a 32-wide, 2-block ViT.

    Keyword arguments override the config (``img_size``, ``num_queries``, ``classes``, ...).
    """
    import torch

    from tokenmask_ros.model import TokenMaskConfig, build_model, save_checkpoint

    values = {'backbone': 'vit_tiny_patch16_224', 'img_size': 64, 'embed_dim': 32, 'depth': 2,
              'num_heads': 2, 'num_queries': 10, 'num_query_blocks': 1, 'num_classes': 4}
    torch.manual_seed(seed)
    return save_checkpoint(build_model(TokenMaskConfig(**{**values, **config})), path)


def spin_until(executor, done, timeout: float = 60.0) -> bool:
    """Spin ``executor`` until ``done()`` holds or ``timeout`` seconds pass; ``done()``'s value."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return True
        executor.spin_once(timeout_sec=0.05)
    return bool(done())
