"""The ROS 2 edge: the only code that imports rclpy (the node, its parameter table, the bag player)."""
