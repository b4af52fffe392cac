"""``slurm-k8s-bridge doctor``: checks a site's setup -- slurm.conf, plugstack.conf, the
installed plugins, the bridge configuration, munge, and Kubernetes as the daemon sees it --
and says what is wrong and how to fix it (``run.run_doctor``; ``report`` prints it).

It sits on top, like the CLI: it may use ``core``, ``slurm`` and ``kube``; nothing imports it
but ``cli``.
"""
