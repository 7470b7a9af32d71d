"""The package as ROS sees it: manifest, installed files, parameter file, launch file."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT

RUNTIME_DEPENDENCIES = {'rclpy', 'sensor_msgs', 'std_msgs', 'vision_msgs', 'diagnostic_msgs'}


def test_manifest_is_format_3_ament_python_with_the_required_dependencies():
    catkin_pkg = pytest.importorskip('catkin_pkg.package')
    package = catkin_pkg.parse_package(str(REPO_ROOT / 'package.xml'))
    package.validate()
    assert package.package_format == 3
    assert package.name == 'tokenmask_ros'
    assert package.get_build_type() == 'ament_python'
    exec_deps = {d.name for d in package.exec_depends}
    assert exec_deps >= RUNTIME_DEPENDENCIES
    assert 'python3-pytest' in {d.name for d in package.test_depends}


def test_installed_share_has_manifest_launch_and_config():
    packages = pytest.importorskip('ament_index_python.packages')
    try:
        share = Path(packages.get_package_share_directory('tokenmask_ros'))
    except packages.PackageNotFoundError:
        pytest.skip('tokenmask_ros is not installed (colcon build first)')
    for relative in ('package.xml', 'config/image_source.yaml', 'launch/image_source.launch.py',
                     'config/segment.yaml', 'config/segment.rviz', 'launch/segment.launch.py',
                     'launch/two_cameras.launch.py', 'models/README.md'):
        assert (share / relative).is_file(), relative
    prefix = Path(packages.get_package_prefix('tokenmask_ros'))
    for script in ('image_source', 'segment_node', 'tokenmask'):
        assert (prefix / 'lib' / 'tokenmask_ros' / script).is_file(), script


def test_parameter_file_matches_the_node_defaults(ros_node):
    """config/image_source.yaml and the node's declared defaults must not drift apart."""
    from tokenmask_ros.ros.image_source import PARAMETERS, ImageSourceNode

    config = yaml.safe_load((REPO_ROOT / 'config' / 'image_source.yaml').read_text())
    file_values = config['image_source']['ros__parameters']
    assert set(file_values) == set(PARAMETERS)
    node = ImageSourceNode()
    try:
        for name, value in file_values.items():
            assert node.get_parameter(name).value == value, name
            assert node.describe_parameter(name).description, f'{name} has no description'
    finally:
        node.destroy_node()


def test_model_and_runtime_packages_do_not_import_ros():
    """`model/` and `runtime/` must work on machines without ROS (docs/architecture.md,
    "Layers")."""
    offenders = []
    for folder in ('model', 'runtime'):
        for path in (REPO_ROOT / 'tokenmask_ros' / folder).rglob('*.py'):
            text = path.read_text()
            if 'import rclpy' in text or 'from rclpy' in text or '_msgs' in text:
                offenders.append(str(path))
    assert offenders == []


@pytest.mark.skipif(importlib.util.find_spec('launch_ros') is None,
                    reason='the ROS launch package has no wheel; checked where it is installed')
def test_launch_file_builds_a_launch_description():
    from launch import LaunchDescription

    spec = importlib.util.spec_from_file_location(
        'image_source_launch', REPO_ROOT / 'launch' / 'image_source.launch.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert isinstance(module.generate_launch_description(), LaunchDescription)


def test_bundled_model_is_found_without_a_sourced_ros_environment():
    """`tokenmask` and `training/` run from a plain shell, where AMENT_PREFIX_PATH is unset."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != 'AMENT_PREFIX_PATH'}
    code = ('from tokenmask_ros.bundled import default_model_path, not_found_message\n'
            'print(default_model_path())\n'
            'print(not_found_message("checkpoint", "x/tokenmask_vit_tiny_synthetic.safetensors"))\n'
            'print(not_found_message("checkpoint", "x/mine.safetensors"))\n')
    result = subprocess.run([sys.executable, '-c', code], env=env, cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    found, hinted, plain = result.stdout.splitlines()
    assert Path(found).is_file() and Path(found).parent.name == 'models'
    assert hinted.startswith('checkpoint not found: x/tokenmask_vit_tiny_synthetic.safetensors')
    assert f'the bundled model in this checkout is {found}' in hinted
    assert plain == 'checkpoint not found: x/mine.safetensors'


def test_resolve_model_path_finds_the_bundled_model_by_default_and_by_bare_name(
        tmp_path, monkeypatch):
    from tokenmask_ros.bundled import BUNDLED_MODELS, default_model_path, resolve_model_path

    monkeypatch.chdir(tmp_path)
    bundled = default_model_path()
    assert resolve_model_path(None) == resolve_model_path('') == bundled
    assert resolve_model_path(BUNDLED_MODELS[0]) == bundled
    # A path with a folder part is taken literally, even when it does not exist.
    assert resolve_model_path(f'./{BUNDLED_MODELS[0]}') == Path(BUNDLED_MODELS[0])
    assert resolve_model_path('other.safetensors') == Path('other.safetensors')
    # A file of that name in the working folder wins over the bundled copy.
    (tmp_path / BUNDLED_MODELS[0]).write_bytes(b'mine')
    assert resolve_model_path(BUNDLED_MODELS[0]) == Path(BUNDLED_MODELS[0])
