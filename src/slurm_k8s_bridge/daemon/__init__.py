"""The bridge daemon: observe Slurm and Kubernetes, plan (pure), act; mirror the GPU nodes into sinfo."""
