"""Tests against a real local Kubernetes control plane with KWOK GPU nodes."""
