"""TokenMask and the EoMT baseline in pure PyTorch (no ROS imports)."""
