/*
 * pause: the sandbox ("infra") process of a pod, written for slurm-k8s-bridge's test node.
 *
 * It holds the pod's namespaces open: it sleeps until SIGTERM or SIGINT (exit 0), and as
 * PID 1 of a pod with a shared PID namespace it reaps every orphan that is reparented to it.
 * Built static (no libc in the image): gcc -static -Os -s -o pause pause.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAUSE_VERSION "skb-pause-1"

static volatile sig_atomic_t stop_signal;

static void on_stop(int sig) { stop_signal = sig; }

static void reap(int sig)
{
	int saved = errno;
	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
	errno = saved;
}

static void handle(int sig, void (*fn)(int), int flags)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = fn;
	sa.sa_flags = flags;
	sigemptyset(&sa.sa_mask);
	if (sigaction(sig, &sa, NULL) < 0) {
		perror("pause: sigaction");
		exit(1);
	}
}

int main(int argc, char **argv)
{
	if (argc > 1 && (strcmp(argv[1], "-v") == 0 || strcmp(argv[1], "--version") == 0)) {
		puts("pause " PAUSE_VERSION);
		return 0;
	}
	if (getpid() != 1)
		fprintf(stderr, "pause: warning: not PID 1 (pid %d)\n", (int)getpid());

	handle(SIGTERM, on_stop, 0);
	handle(SIGINT, on_stop, 0);
	handle(SIGCHLD, reap, SA_NOCLDSTOP | SA_RESTART);

	while (!stop_signal)
		pause();   /* every signal wakes us; only TERM/INT end the loop */

	fprintf(stderr, "pause: signal %d, exiting\n", (int)stop_signal);
	return 0;
}
