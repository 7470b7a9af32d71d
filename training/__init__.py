"""Training, evaluation and benchmarking of TokenMask and the EoMT baseline (imports no ROS)."""
