"""tokenmask_ros: fast panoptic segmentation for ROS 2 with TokenMask.

Subpackages: ``model`` (pure PyTorch), ``runtime`` (inference backends), ``ros`` (rclpy
glue). Only ``ros`` imports rclpy.
"""

__version__ = '0.1.0'
