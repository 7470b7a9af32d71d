"""Start image_source with config/image_source.yaml; `source` and `rate` can be overridden."""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription


def generate_launch_description():
    config = os.path.join(get_package_share_directory('tokenmask_ros'), 'config',
                          'image_source.yaml')
    arguments = [
        DeclareLaunchArgument('source', default_value='synthetic',
                              description='"synthetic", "camera:N", an image folder or a video'),
        DeclareLaunchArgument('rate', default_value='10.0', description='publish rate in Hz'),
        DeclareLaunchArgument('image_topic', default_value='image',
                              description='topic to publish sensor_msgs/Image on'),
    ]
    node = Node(
        package='tokenmask_ros',
        executable='image_source',
        name='image_source',
        parameters=[config, {'source': LaunchConfiguration('source'),
                             'rate': LaunchConfiguration('rate')}],
        remappings=[('image', LaunchConfiguration('image_topic')),
                    ('image/compressed', [LaunchConfiguration('image_topic'), '/compressed'])],
        output='screen',
    )
    return LaunchDescription([*arguments, node])
