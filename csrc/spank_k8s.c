/*
 * spank_k8s: the SPANK side of slurm-k8s-bridge.
 *
 * In sbatch, salloc and srun (allocator and local contexts) this plugin only registers
 * and checks its options, in C: nothing else is loaded, so the user's commands stay as
 * fast as without it. Option values travel to slurmctld in the job's SPANK environment
 * (_SLURM_SPANK_OPTION_k8s_bridge_<option>), where job_submit/k8s reads them.
 *
 * Inside a bridged pod (slurmstepd, remote context, SLURM_K8S_JOB_ID in slurmd's
 * environment) it loads spank_k8s_py.so, the embedded-Python half, and applies the task
 * environment the bridge configuration asks for -- as root, before the tasks are forked.
 *
 * plugstack.conf:  required spank_k8s.so [config=/etc/slurm/k8s-bridge.yaml]
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dlfcn.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <slurm/spank.h>

#include "k8sb_contract.h" /* generated from core/contract.py at build */

/* SPANK_PLUGIN stringifies its argument: expand K8SB_SPANK_NAME first */
#define K8SB_SPANK_PLUGIN(name, version) SPANK_PLUGIN(name, version)
K8SB_SPANK_PLUGIN(K8SB_SPANK_NAME, 1);

/* the contract this plugin was built with, for the build test to read back */
static const char k8sb_contract_fingerprint[] __attribute__((used)) = K8SB_CONTRACT_FINGERPRINT;

#define NAME "spank_k8s"

static char config_path[PATH_MAX];

/* --- options -------------------------------------------------------------------------- */

/* The value as a refusal may quote it: one line (control characters as '?') of at most
 * SHOWN_MAX bytes, cut before a UTF-8 character, then "...". */
#define SHOWN_MAX 64
static const char *shown(const char *v, char buf[SHOWN_MAX + 4])
{
	size_t i;
	if (!v)
		return "";
	for (i = 0; v[i] && i < SHOWN_MAX; i++)
		buf[i] = ((unsigned char) v[i] < 0x20 || v[i] == 0x7f) ? '?' : v[i];
	if (v[i]) {
		while (i > 0 && ((unsigned char) v[i] & 0xc0) == 0x80)
			i--; /* do not split a multi-byte character */
		memcpy(buf + i, "...", 3);
		i += 3;
	}
	buf[i] = '\0';
	return buf;
}

static int check_image(const char *v)
{
	size_t n = strlen(v);
	if (n == 0 || n > K8SB_IMAGE_MAX)
		return -1;
	for (; *v; v++)
		if (!isalnum((unsigned char) *v) && !strchr(K8SB_IMAGE_PUNCTUATION, *v))
			return -1;
	return 0;
}

/* Kubernetes names: lowercase alphanumerics, '-' and '.', alphanumeric at both ends. */
static int check_k8s_name(const char *v, size_t max)
{
	size_t n = strlen(v), i;
	if (n == 0 || n > max || !isalnum((unsigned char) v[0]) ||
	    !isalnum((unsigned char) v[n - 1]))
		return -1;
	for (i = 0; i < n; i++)
		if (!(islower((unsigned char) v[i]) || isdigit((unsigned char) v[i]) ||
		      v[i] == '-' || v[i] == '.'))
			return -1;
	return 0;
}

static int opt_image(int val, const char *optarg, int remote)
{
	char buf[SHOWN_MAX + 4];
	if (!optarg || check_image(optarg)) {
		slurm_error(NAME ": --k8s-image: invalid image reference '%s'",
			    shown(optarg, buf));
		return -1;
	}
	return 0;
}

static int opt_queue(int val, const char *optarg, int remote)
{
	char buf[SHOWN_MAX + 4];
	if (!optarg || check_k8s_name(optarg, K8SB_QUEUE_NAME_MAX)) {
		slurm_error(NAME ": --k8s-queue: '%s' is not a valid queue name "
			    "(lowercase letters, digits, '-' and '.')", shown(optarg, buf));
		return -1;
	}
	return 0;
}

static int opt_priority(int val, const char *optarg, int remote)
{
	char buf[SHOWN_MAX + 4];
	if (!optarg || check_k8s_name(optarg, K8SB_PRIORITY_CLASS_MAX)) {
		slurm_error(NAME ": --k8s-priority: '%s' is not a valid PriorityClass name",
			    shown(optarg, buf));
		return -1;
	}
	return 0;
}

static struct spank_option options[] = {
	{ K8SB_IMAGE_OPTION, "IMAGE", "Container image for this job's pods (slurm-k8s-bridge)",
	  1, 0, opt_image },
	{ K8SB_QUEUE_OPTION, "QUEUE", "Kubernetes queue for this job (slurm-k8s-bridge)",
	  1, 0, opt_queue },
	{ K8SB_PRIORITY_OPTION, "CLASS", "Kubernetes PriorityClass for this job (slurm-k8s-bridge)",
	  1, 0, opt_priority },
	SPANK_OPTIONS_TABLE_END
};

/* --- plugstack.conf arguments ------------------------------------------------------- */

static int parse_args(int ac, char **av)
{
	int i;
	const char *env = getenv(K8SB_CONFIG_ENV);

	snprintf(config_path, sizeof(config_path), "%s",
		 (env && *env) ? env : K8SB_DEFAULT_CONFIG);
	for (i = 0; i < ac; i++) {
		if (!strncmp(av[i], "config=", 7) && av[i][7]) {
			snprintf(config_path, sizeof(config_path), "%s", av[i] + 7);
		} else {
			slurm_error(NAME ": unknown plugstack.conf argument '%s' "
				    "(known: config=PATH)", av[i]);
			return -1;
		}
	}
	return 0;
}

int slurm_spank_init(spank_t sp, int ac, char **av)
{
	struct spank_option *opt;

	if (parse_args(ac, av))
		return -1;
	for (opt = options; opt->name; opt++)
		if (spank_option_register(sp, opt) != ESPANK_SUCCESS) {
			slurm_error(NAME ": cannot register --%s", opt->name);
			return -1;
		}
	return 0;
}

/* --- inside a bridged pod ----------------------------------------------------------- */

typedef int (*task_env_fn)(const char *config, unsigned int job_id, unsigned int uid,
			   char *out, size_t outlen, char *err, size_t errlen);

static task_env_fn load_python_half(void)
{
	static task_env_fn fn;
	static int tried;
	Dl_info self;
	char path[PATH_MAX], *slash;
	void *handle;

	if (tried)
		return fn;
	tried = 1;
	if (!dladdr((void *) load_python_half, &self) || !self.dli_fname) {
		slurm_error(NAME ": cannot locate myself");
		return NULL;
	}
	snprintf(path, sizeof(path), "%s", self.dli_fname);
	slash = strrchr(path, '/');
	snprintf(slash ? slash + 1 : path, sizeof(path) - (slash ? slash + 1 - path : 0),
		 "spank_k8s_py.so");
	handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!handle) {
		slurm_error(NAME ": cannot load %s: %s", path, dlerror());
		return NULL;
	}
	fn = (task_env_fn) dlsym(handle, "k8sb_spank_task_env");
	if (!fn)
		slurm_error(NAME ": %s lacks k8sb_spank_task_env", path);
	return fn;
}

/* Runs in slurmstepd as root (user_init would run as the job owner, who may not be able
 * to read the bridge's Python installation), once per step, before tasks are forked. */
int slurm_spank_init_post_opt(spank_t sp, int ac, char **av)
{
	uint32_t job_id = 0;
	uid_t uid = 0;
	task_env_fn fn;
	char *out, *line, *save = NULL, err[512] = "";
	int rc = 0;

	if (!spank_remote(sp) || !getenv(K8SB_POD_JOB_ID_ENV))
		return 0; /* not a bridged pod: nothing to do */
	spank_get_item(sp, S_JOB_ID, &job_id);
	spank_get_item(sp, S_JOB_UID, &uid);
	if (!(fn = load_python_half()))
		return -1;
	out = calloc(1, 65536);
	if (!out)
		return -1;
	if (fn(config_path, job_id, (unsigned int) uid, out, 65536, err, sizeof(err)) != 0) {
		slurm_error(NAME ": job %u: task environment: %s", job_id, err);
		free(out);
		return -1;
	}
	for (line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *eq = strchr(line, '=');
		if (!eq)
			continue;
		*eq = '\0';
		if (spank_setenv(sp, line, eq + 1, 1) != ESPANK_SUCCESS) {
			slurm_error(NAME ": cannot set %s", line);
			rc = -1;
		}
	}
	free(out);
	return rc;
}
