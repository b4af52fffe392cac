/*
 * job_submit/k8s: slurmctld's entry points, kept to marshalling and safety.
 *
 * Policy lives in Python (slurm_k8s_bridge.plugin_job_submit). This file:
 *   - exports the symbols slurmctld requires,
 *   - starts the embedded interpreter (isolated, see k8s_pyembed.c),
 *   - refuses jobs when Python is not working, instead of accepting them unchecked
 *     (a cffi entry point whose Python is missing returns 0 = SLURM_SUCCESS),
 *   - serialises calls (23.02+ may call job_submit concurrently),
 *   - reads and replaces the bridge stamp in the job record on job_modify.
 *
 * The k8sb_js_* functions are implemented in Python through cffi's embedding API.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <slurm/slurm.h>
#include <slurm/slurm_errno.h>
#include <slurm/spank.h> /* slurm_info, slurm_error */

#include "k8s_pyembed.h"
#include "k8sb_contract.h" /* generated from core/contract.py at build */

const char plugin_name[] = "slurm-k8s-bridge job_submit plugin";
const char plugin_type[] = "job_submit/k8s";
const uint32_t plugin_version = SLURM_VERSION_NUMBER;

/* libslurmfull's allocator: slurmctld xfree()s what plugins hand back. */
extern char *slurm_xstrdup(const char *str);
extern void slurm_xfree(void **item);

/* the contract this plugin was built with, for the build test to read back */
static const char k8sb_contract_fingerprint[] __attribute__((used)) = K8SB_CONTRACT_FINGERPRINT;

/* Implemented in Python (cffi embedding API, see plugin_build.JOB_SUBMIT_API). */
int k8sb_js_ping(void);
int k8sb_js_init(const char *config_path, char *errbuf, size_t errlen);
int k8sb_js_submit(job_desc_msg_t *job_desc, uint32_t submit_uid, char **err_msg);
int k8sb_js_modify(job_desc_msg_t *job_desc, const char *stamp, uint32_t uid, char **err_msg,
		   char **new_stamp);

/* The start of slurmctld's job record (src/slurmctld/slurmctld.h, later
 * src/common/job_record.h). Only the fields up to admin_comment are used; the magic value
 * is checked before anything is read or written. */
#define K8SB_JOB_MAGIC 0xf0b7392c
struct k8sb_job_record_head {
#if SLURM_VERSION_NUMBER >= SLURM_VERSION_NUM(25, 11, 0)
	slurm_step_id_t step_id;
#endif
	uint32_t magic;
	char *account;
	char *admin_comment;
};
struct job_record;

static pthread_mutex_t call_lock = PTHREAD_MUTEX_INITIALIZER;
static int bridge_state; /* 0 not tried, 1 ready, -1 broken */
static char bridge_error[1024];
/* $SLURM_K8S_BRIDGE_TIMINGS: append the duration of every job_submit call (ns), for the
 * benchmark. Unset in production. */
static FILE *timings;

static int bridge_ready(void)
{
	char err[1024] = "";

	if (bridge_state)
		return bridge_state > 0;
	bridge_state = -1;
	if (k8sb_python_start(err, sizeof(err))) {
		snprintf(bridge_error, sizeof(bridge_error), "%s", err);
	} else if (k8sb_js_ping() != K8SB_PY_MAGIC) {
		snprintf(bridge_error, sizeof(bridge_error),
			 "the slurm_k8s_bridge Python package failed to load");
	} else if (k8sb_js_init(k8sb_default_config_path(), err, sizeof(err))) {
		snprintf(bridge_error, sizeof(bridge_error), "%s", err);
	} else {
		bridge_state = 1;
		return 1;
	}
	slurm_error("job_submit/k8s: bridge unavailable, every job will be refused: %s",
		    bridge_error);
	return 0;
}

static int refuse_unavailable(char **err_msg)
{
	char msg[1280];

	snprintf(msg, sizeof(msg),
		 K8SB_MESSAGE_PREFIX "job submission is unavailable: the bridge could not start (%s); "
		 "ask your administrator",
		 bridge_error);
	if (err_msg)
		*err_msg = slurm_xstrdup(msg);
	return ESLURM_NOT_SUPPORTED;
}

/* Python's answer to a call: a Slurm return code, or -1 if Python itself failed. */
static int python_rc(int rc, char **err_msg)
{
	if (rc >= 0)
		return rc;
	if (err_msg && !*err_msg)
		*err_msg = slurm_xstrdup(K8SB_MESSAGE_PREFIX "internal error while checking this job; "
					 "see slurmctld's log");
	return ESLURM_NOT_SUPPORTED;
}

int init(void)
{
	const char *path = getenv("SLURM_K8S_BRIDGE_TIMINGS");

	if (path && *path && !timings) {
		timings = fopen(path, "a");
		if (timings)
			setvbuf(timings, NULL, _IOLBF, 0);
	}
	/* Never return non-zero: that would make slurmctld exit. A broken bridge refuses
	 * jobs instead and says why. */
	if (bridge_ready())
		slurm_info("job_submit/k8s: ready (config %s)", k8sb_default_config_path());
	return SLURM_SUCCESS;
}

void fini(void)
{
	/* Python is never finalised: the library is linked -z nodelete and the interpreter
	 * lives as long as slurmctld. */
}

int job_submit(job_desc_msg_t *job_desc, uint32_t submit_uid, char **err_msg)
{
	struct timespec t0, t1;
	int rc;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	pthread_mutex_lock(&call_lock);
	if (!bridge_ready())
		rc = refuse_unavailable(err_msg);
	else
		rc = python_rc(k8sb_js_submit(job_desc, submit_uid, err_msg), err_msg);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	if (timings)
		fprintf(timings, "%lld\n", (long long) (t1.tv_sec - t0.tv_sec) * 1000000000LL +
						(t1.tv_nsec - t0.tv_nsec));
	pthread_mutex_unlock(&call_lock);
	return rc;
}

static int modify(job_desc_msg_t *job_desc, struct job_record *job_ptr, uint32_t uid,
		  char **err_msg)
{
	struct k8sb_job_record_head *head = (struct k8sb_job_record_head *) job_ptr;
	const char *stamp;
	char *new_stamp = NULL;
	int rc;

	if (!job_ptr || head->magic != K8SB_JOB_MAGIC) {
		slurm_error("job_submit/k8s: job record layout not recognised; "
			    "modification refused");
		return ESLURM_NOT_SUPPORTED;
	}
	stamp = head->admin_comment;
	pthread_mutex_lock(&call_lock);
	if (!bridge_ready()) {
		/* only bridged jobs (stamped) need Python; leave the others alone */
		rc = (stamp && !strncmp(stamp, K8SB_STAMP_FAMILY, strlen(K8SB_STAMP_FAMILY))) ? refuse_unavailable(err_msg)
							   : SLURM_SUCCESS;
	} else {
		rc = python_rc(k8sb_js_modify(job_desc, stamp, uid, err_msg, &new_stamp),
			       err_msg);
	}
	pthread_mutex_unlock(&call_lock);
	if (rc == SLURM_SUCCESS && new_stamp) {
		slurm_xfree((void **) &head->admin_comment);
		head->admin_comment = new_stamp; /* allocated with slurm_xstrdup */
	} else if (new_stamp) {
		slurm_xfree((void **) &new_stamp);
	}
	return rc;
}

#if SLURM_VERSION_NUMBER >= SLURM_VERSION_NUM(23, 2, 0)
int job_modify(job_desc_msg_t *job_desc, struct job_record *job_ptr, uint32_t submit_uid,
	       char **err_msg)
{
	return modify(job_desc, job_ptr, submit_uid, err_msg);
}
#else
int job_modify(job_desc_msg_t *job_desc, struct job_record *job_ptr, uint32_t submit_uid)
{
	char *err_msg = NULL;
	int rc = modify(job_desc, job_ptr, submit_uid, &err_msg);

	/* 22.05 has no way to show a message to the user here: log it. */
	if (err_msg) {
		slurm_info("job_submit/k8s: modification refused: %s", err_msg);
		slurm_xfree((void **) &err_msg);
	}
	return rc;
}
#endif
