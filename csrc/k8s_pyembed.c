/*
 * Isolated, fork-safe start of the embedded interpreter. See k8s_pyembed.h.
 *
 * Build-time definitions (set by slurm_k8s_bridge.plugin_build):
 *   K8SB_PYTHON_EXECUTABLE  the python of the environment the package lives in
 *   K8SB_PYTHON_PATH        that interpreter's sys.path, ':'-separated
 *   K8SB_LIBPYTHON          soname of libpython, e.g. "libpython3.11.so.1.0"
 *   K8SB_DEFAULT_CONFIG     default configuration path
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "k8s_pyembed.h"
#include "k8sb_contract.h" /* generated from core/contract.py at build */

#ifndef K8SB_DEFAULT_CONFIG
#error "K8SB_DEFAULT_CONFIG comes from k8sb_contract.h or the build"
#endif

static pthread_mutex_t start_lock = PTHREAD_MUTEX_INITIALIZER;
static PyGILState_STATE fork_gil;

const char *k8sb_default_config_path(void)
{
	const char *env = getenv(K8SB_CONFIG_ENV);
	return (env && *env) ? env : K8SB_DEFAULT_CONFIG;
}

/* fork() while another thread holds the GIL would leave the child with a lock nobody can
 * release: take the GIL around every fork of this process. */
static void before_fork(void)
{
	fork_gil = PyGILState_Ensure();
	PyOS_BeforeFork();
}

static void after_fork_parent(void)
{
	PyOS_AfterFork_Parent();
	PyGILState_Release(fork_gil);
}

static void after_fork_child(void)
{
	PyOS_AfterFork_Child();
	PyGILState_Release(fork_gil);
}

static int set_string(PyConfig *config, wchar_t **field, const char *value,
		      char *errbuf, size_t errlen)
{
	PyStatus status = PyConfig_SetBytesString(config, field, value);
	if (PyStatus_Exception(status)) {
		snprintf(errbuf, errlen, "cannot set Python configuration: %s",
			 status.err_msg ? status.err_msg : "unknown error");
		return -1;
	}
	return 0;
}

static int start_locked(char *errbuf, size_t errlen)
{
	PyConfig config;
	PyStatus status;
	char *paths, *path, *save = NULL;
	int rc = -1;

	/* Slurm dlopen()s plugins RTLD_LOCAL; C extensions imported later (_cffi_backend,
	 * _yaml, ...) need libpython's symbols in the global namespace. */
	if (!dlopen(K8SB_LIBPYTHON, RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD) &&
	    !dlopen(K8SB_LIBPYTHON, RTLD_NOW | RTLD_GLOBAL)) {
		snprintf(errbuf, errlen, "cannot load %s: %s", K8SB_LIBPYTHON, dlerror());
		return -1;
	}

	PyConfig_InitIsolatedConfig(&config);
	config.install_signal_handlers = 0; /* the host daemon owns signals */
	config.write_bytecode = 0;          /* never write into the install tree */
	config.user_site_directory = 0;
	config.site_import = 1;             /* .pth files of the environment */
	config.buffered_stdio = 0;
	if (set_string(&config, &config.program_name, K8SB_PYTHON_EXECUTABLE, errbuf, errlen) ||
	    set_string(&config, &config.executable, K8SB_PYTHON_EXECUTABLE, errbuf, errlen))
		goto out;

	config.module_search_paths_set = 1;
	paths = strdup(K8SB_PYTHON_PATH);
	if (!paths) {
		snprintf(errbuf, errlen, "out of memory");
		goto out;
	}
	for (path = strtok_r(paths, ":", &save); path; path = strtok_r(NULL, ":", &save)) {
		wchar_t *wide = Py_DecodeLocale(path, NULL);
		if (!wide) {
			snprintf(errbuf, errlen, "cannot decode path %s", path);
			free(paths);
			goto out;
		}
		status = PyWideStringList_Append(&config.module_search_paths, wide);
		PyMem_RawFree(wide);
		if (PyStatus_Exception(status)) {
			snprintf(errbuf, errlen, "cannot set sys.path");
			free(paths);
			goto out;
		}
	}
	free(paths);

	status = Py_InitializeFromConfig(&config);
	if (PyStatus_Exception(status)) {
		snprintf(errbuf, errlen, "Python failed to start (%s): %s",
			 K8SB_PYTHON_EXECUTABLE,
			 status.err_msg ? status.err_msg : "unknown error");
		goto out;
	}
	PyEval_SaveThread(); /* release the GIL; embedded calls take it as needed */
	pthread_atfork(before_fork, after_fork_parent, after_fork_child);
	rc = 0;
out:
	PyConfig_Clear(&config);
	return rc;
}

int k8sb_python_start(char *errbuf, size_t errlen)
{
	static int state; /* 0 not tried, 1 running, -1 failed */
	static char first_error[512];
	int rc;

	pthread_mutex_lock(&start_lock);
	if (state == 0) {
		if (Py_IsInitialized()) {
			state = 1; /* someone else started it; use theirs */
		} else {
			state = start_locked(first_error, sizeof(first_error)) ? -1 : 1;
		}
	}
	rc = (state == 1) ? 0 : -1;
	if (rc)
		snprintf(errbuf, errlen, "%s", first_error);
	pthread_mutex_unlock(&start_lock);
	return rc;
}
