/*
 * Starting the bridge's Python inside a Slurm daemon or command.
 *
 * The interpreter is the one the slurm-k8s-bridge package was installed with (recorded at
 * build time), started isolated: the caller's PYTHONHOME, PYTHONPATH and user site are
 * ignored. Safe to call more than once; fork-safe once started.
 */
#ifndef K8S_PYEMBED_H
#define K8S_PYEMBED_H

#include <stddef.h>

/* Start Python if it is not running yet. Returns 0 on success; on failure returns -1 and
 * writes one line into errbuf. Never exits the process. */
int k8sb_python_start(char *errbuf, size_t errlen);

/* Where the bridge configuration is: $SLURM_K8S_BRIDGE_CONFIG, else the path given when
 * the plugins were built (default /etc/slurm/k8s-bridge.yaml). */
const char *k8sb_default_config_path(void);

#endif
