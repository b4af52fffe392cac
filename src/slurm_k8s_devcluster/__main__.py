"""``python -m slurm_k8s_devcluster``: the ``dev-cluster`` command."""

import sys

from slurm_k8s_devcluster.cli import main

sys.exit(main())
