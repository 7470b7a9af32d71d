"""Inference backends behind one Segmenter interface (no ROS imports)."""
