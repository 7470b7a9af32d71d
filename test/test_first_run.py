"""A new user's first run: `source scripts/ros_env.sh` then the documented commands.

Real shells with a clean environment (no ROS, no PYTHONPATH), against the console scripts
`make build` installed; skipped where nothing is built yet.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import REPO_ROOT

SCRIPTS = REPO_ROOT / 'install' / 'tokenmask_ros' / 'lib' / 'tokenmask_ros'
needs_build = pytest.mark.skipif(not (SCRIPTS / 'tokenmask').is_file(),
                                 reason='install/ is absent: run `make build` first')


def clean_env() -> dict[str, str]:
    """What a fresh login shell has: no ROS, no venv, no PYTHONPATH."""
    env = {'HOME': os.environ.get('HOME', '/tmp'), 'PATH': '/usr/bin:/bin',
           'LANG': 'C.UTF-8'}
    env['ROS_DOMAIN_ID'] = os.environ.get('ROS_DOMAIN_ID', '0')  # keep tests isolated
    return env


@needs_build
def test_tokenmask_help_works_after_sourcing_ros_env(tmp_path):
    script = 'source scripts/ros_env.sh && tokenmask --help && command -v tokenmask'
    result = subprocess.run(['bash', '-c', script], cwd=REPO_ROOT, env=clean_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('usage: tokenmask')
    assert 'predict' in result.stdout and 'Traceback' not in result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(SCRIPTS / 'tokenmask')


@needs_build
def test_ros_env_works_under_set_u_and_from_another_folder(tmp_path):
    script = (f'set -eu; source {REPO_ROOT}/scripts/ros_env.sh; '
              'tokenmask predict --help >/dev/null; echo "$AMENT_PREFIX_PATH"')
    result = subprocess.run(['bash', '-c', script], cwd=tmp_path, env=clean_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert str(REPO_ROOT / 'install' / 'tokenmask_ros') in result.stdout.split(':')


@needs_build
@pytest.mark.parametrize('name', ['tokenmask', 'segment_node', 'image_source'])
def test_unsourced_console_scripts_say_in_one_line_what_to_run(tmp_path, name):
    result = subprocess.run([str(SCRIPTS / name), '--help'], cwd=tmp_path, env=clean_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f'{name}: error: the tokenmask_ros Python package is not on')
    assert '`source scripts/ros_env.sh`' in lines[0] and '`make build`' in lines[0]
