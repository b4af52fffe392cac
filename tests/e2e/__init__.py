"""End to end on a real kubelet: worker pods running slurmd for real."""
