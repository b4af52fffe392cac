#!/bin/sh
# ResumeProgram for slurm-k8s-bridge inventory nodes (State=CLOUD, one group per Kubernetes
# GPU node shape). They exist so slurmctld accepts what the shapes can run; they must never
# run anything: bridged jobs are held by job_submit/k8s and run on their pods' own dynamic
# nodes. If something still asks Slurm to power one up, mark it down with the reason, so
# the job is requeued instead of waiting for a node that will never come.
exec scontrol update nodename="$1" state=down \
	reason="slurm-k8s-bridge inventory node: not allocatable (job was not held by job_submit/k8s)"
