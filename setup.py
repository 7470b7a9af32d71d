"""Installs tokenmask_ros as an ament_python package (see package.xml)."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'tokenmask_ros'

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(include=[PACKAGE, f'{PACKAGE}.*']),
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
        'console_scripts': [
            'image_source = tokenmask_ros.ros.image_source:main',
            'segment_node = tokenmask_ros.ros.segment_node:main',
            'tokenmask = tokenmask_ros.cli:main',
        ],
    },
)
