"""rclpy glue: nodes, message conversion and QoS. The only part of the package that imports ROS."""
