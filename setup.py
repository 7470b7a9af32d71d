"""Installs tokenmask_ros as an ament_python package (see package.xml)."""

from glob import glob

from setuptools import find_packages, setup
from setuptools.command.develop import develop
from setuptools.command.install_scripts import install_scripts

PACKAGE = 'tokenmask_ros'
CONSOLE_SCRIPTS = {
    'image_source': 'tokenmask_ros.ros.image_source:main',
    'segment_node': 'tokenmask_ros.ros.segment_node:main',
    'tokenmask': 'tokenmask_ros.cli:main',
}

# setuptools' own wrapper looks the distribution up with importlib.metadata, which ends in a
# 20-line PackageNotFoundError traceback whenever the workspace is not sourced. This one
# imports the entry point directly and says in one line what to source instead.
SCRIPT = '''{shebang}
# {name}: console script of tokenmask_ros, written by its setup.py.
import sys

try:
    from {module} import {function}
except ModuleNotFoundError as error:
    if error.name != '{package}':
        raise
    sys.exit('{name}: error: the {package} Python package is not on the Python path; run '
             '`source scripts/ros_env.sh` in the repository (after `make build`), or source '
             'the install/setup.bash of the workspace that built it')
sys.exit({function}())
'''


class _PlainScripts:
    """Write our console scripts from :data:`SCRIPT` instead of setuptools' template."""

    def write_script(self, script_name, contents, mode='t', *rest):
        if script_name in CONSOLE_SCRIPTS:
            module, function = CONSOLE_SCRIPTS[script_name].split(':')
            contents = SCRIPT.format(shebang=contents.splitlines()[0], name=script_name,
                                     module=module, function=function, package=PACKAGE)
            mode = 't'
        return super().write_script(script_name, contents, mode, *rest)


class PlainInstallScripts(_PlainScripts, install_scripts):
    """``setup.py install`` (colcon build)."""


class PlainDevelop(_PlainScripts, develop):
    """``setup.py develop`` (colcon build --symlink-install)."""


setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(include=[PACKAGE, f'{PACKAGE}.*']),
    package_data={f'{PACKAGE}.model': ['label_sets/*.json']},
    data_files=[
        ('share/ament_index/resource_index/packages', [f'resource/{PACKAGE}']),
        (f'share/{PACKAGE}', ['package.xml']),
        (f'share/{PACKAGE}/launch', glob('launch/*.launch.py')),
        (f'share/{PACKAGE}/config', glob('config/*.yaml') + glob('config/*.rviz')),
        (f'share/{PACKAGE}/models', glob('models/*.safetensors') + glob('models/*.md')),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='tokenmask_ros maintainers',
    maintainer_email='maintainers@tokenmask-ros.dev',
    description='Fast panoptic segmentation for ROS 2 with TokenMask (token-space mask head).',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
    entry_points={
        'console_scripts': [f'{name} = {target}' for name, target in CONSOLE_SCRIPTS.items()],
    },
    cmdclass={'install_scripts': PlainInstallScripts, 'develop': PlainDevelop},
)
