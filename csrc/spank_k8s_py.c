/*
 * spank_k8s_py.so: the embedded-Python half of spank_k8s, loaded by spank_k8s.so only
 * inside bridged pods (slurmstepd). k8sb_sp_task_env is implemented in Python
 * (slurm_k8s_bridge.plugin_spank) through cffi's embedding API.
 */
#include <stdio.h>
#include <string.h>

#include <slurm/spank.h>

#include "k8s_pyembed.h"
#include "k8sb_contract.h" /* generated from core/contract.py at build */

static const char k8sb_contract_fingerprint[] __attribute__((used)) = K8SB_CONTRACT_FINGERPRINT;

/* Implemented in Python (cffi embedding API, see plugin_build.SPANK_API). */
int k8sb_sp_ping(void);
int k8sb_sp_task_env(const char *config, unsigned int job_id, unsigned int uid, char *out,
		     size_t outlen, char *err, size_t errlen);

int k8sb_spank_task_env(const char *config, unsigned int job_id, unsigned int uid, char *out,
			size_t outlen, char *err, size_t errlen)
{
	if (k8sb_python_start(err, errlen))
		return -1;
	if (k8sb_sp_ping() != K8SB_PY_MAGIC) {
		snprintf(err, errlen, "the slurm_k8s_bridge Python package failed to load");
		return -1;
	}
	out[0] = '\0';
	if (k8sb_sp_task_env(config, job_id, uid, out, outlen, err, errlen) != 0) {
		if (!err[0])
			snprintf(err, errlen, "Python failed (see slurmd log)");
		return -1;
	}
	return 0;
}
