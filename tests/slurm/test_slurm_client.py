"""slurm_client against captured Slurm 22.05 output and against real slurmctld/slurmd.

The parser tests replay text captured from Debian's Slurm 22.05.8 (``scontrol -a show job
-o``, the client's ``squeue`` columns, ``scontrol -a show node -o``), including records a
user forged through newlines and ``  AdminComment=`` in their own free-text fields. The
other tests run one real bridge cluster (job_submit/k8s loaded, partition gpu bridged) for
the whole module; partition gpu also takes every node with feature ``k8s-pod`` (dynamic
slurmd, i.e. pods) or ``k8s-node`` (CLOUD nodes mirroring Kubernetes GPU nodes) through
NodeSets.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timedelta

import pytest

from slurm_k8s_bridge.slurm.records import parse_key_values
from slurm_k8s_bridge.slurm.records import (
    REQUEUE_DELAY_MAX_S,
    SlurmJob,
    eligible,
    expand_array_tasks,
    format_exit_code,
    merge_jobs,
    parse_nodes,
    parse_scontrol_jobs,
    parse_squeue_rows,
    pending_order,
)
from slurm_k8s_bridge.slurm.client import SlurmClient, SlurmCommandError
from slurm_k8s_bridge.core.request import is_stamp

from .bridge_fixtures import make_bridge_cluster
from .conftest import make_base_dir, remove_base_dir, require_root

USER = "bridgeuser"

# -- captured from slurmctld 22.05.8 -----------------------------------------------------
# jobs 2, 3 (--begin=now+1hour), 4 (--array=0-2; task 1 split out as job 5 by an update),
# 7 (--dependency=afternotok:1 after 1 completed), 11 (requeued held, then cancelled);
# 14: partition cpu, --comment 'x  AdminComment=<job 2's stamp>';
# 10 and 15: job names and comments with newlines, forging lines that start "JobId=".
SCONTROL_JOBS = """\
JobId=2 JobName=job.sh UserId=bridgeuser(1001) GroupId=bridgeuser(1001) MCS_label=N/A Priority=0 Nice=0 Account=(null) QOS=(null) JobState=PENDING Reason=JobHeldUser Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:00 TimeLimit=00:10:00 TimeMin=N/A SubmitTime=2026-11-23T06:03:52 EligibleTime=Unknown AccrueTime=Unknown StartTime=Unknown EndTime=Unknown Deadline=N/A SuspendTime=None SecsPreSuspend=0 LastSchedEval=2026-11-23T06:03:52 Scheduler=Main Partition=gpu AllocNode:Sid=localhost:21105 ReqNodeList=(null) ExcNodeList=(null) NodeList= NumNodes=1-1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* TRES=cpu=1,mem=100M,node=1,billing=1 Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* MinCPUsNode=1 MinMemoryCPU=100M MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null) Command=/tmp/skbx/job.sh WorkDir=/tmp AdminComment=k8sb1:eNpNjksOwjAMBa9Sed3ShmUkdtwjShrThjYfxYkoQtwdtwtg-Z7t8bxgyrEm5SxIMQyiBa83FaJF4oKTC38paI8g4R7NiWZogarxrqjVhb0mo8s4N12XdCZtVmy6a9MXn7iymDBYDOPzom8Fc1ykOGY9LWbrv8TiPDKPqbsP54ykEuZDgn9MnOWUqpzZVp75ohJPf_qPmBdlXebdHQ_vDwvtSjo  StdErr=/tmp/slurm-2.out StdIn=/dev/null StdOut=/tmp/slurm-2.out Power= TresPerNode=gres:gpu:h100:2
JobId=3 JobName=name with space UserId=bridgeuser(1001) GroupId=bridgeuser(1001) MCS_label=N/A Priority=0 Nice=0 Account=(null) QOS=(null) JobState=PENDING Reason=JobHeldUser Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:00 TimeLimit=00:10:00 TimeMin=N/A SubmitTime=2026-11-23T06:03:52 EligibleTime=2026-11-23T07:03:52 AccrueTime=2026-11-23T07:03:52 StartTime=2026-11-23T07:03:52 EndTime=2026-11-23T07:13:52 Deadline=N/A SuspendTime=None SecsPreSuspend=0 LastSchedEval=2026-11-23T06:03:52 Scheduler=Main Partition=gpu AllocNode:Sid=localhost:21105 ReqNodeList=(null) ExcNodeList=(null) NodeList= NumNodes=1-1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* TRES=cpu=1,mem=100M,node=1,billing=1 Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* MinCPUsNode=1 MinMemoryCPU=100M MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null) Command=/tmp/skbx/job.sh WorkDir=/tmp AdminComment=k8sb1:eNpdjz0OwjAMha8SZaWhLWMkNiYuESWtlYSSH8WJWglxd9wuICbr-dmf_V7cltSy8jOX4zCMHQ96UzHNgNQg5eOPijoAl0dhq6-OYdYT8I5jM8FX9fRx99HoOjkmRNYFtXkCEzfW15CpZcD6eI1pPY0utcLEnf3hjskeF7P1j2TO6IhffQCi0439TdIFUGUox2900ZKWNjfpKIS80EZDcr-p1lQWNftCszuevz894lH8  StdErr=/tmp/slurm-3.out StdIn=/dev/null StdOut=/tmp/slurm-3.out Power= TresPerNode=gres:gpu:h100:2
JobId=5 ArrayJobId=4 ArrayTaskId=1 JobName=job.sh UserId=bridgeuser(1001) GroupId=bridgeuser(1001) MCS_label=N/A Priority=0 Nice=0 Account=(null) QOS=(null) JobState=PENDING Reason=JobHeldUser Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:00 TimeLimit=00:10:00 TimeMin=N/A SubmitTime=2026-11-23T06:03:52 EligibleTime=Unknown AccrueTime=Unknown StartTime=Unknown EndTime=Unknown Deadline=N/A SuspendTime=None SecsPreSuspend=0 LastSchedEval=2026-11-23T06:03:52 Scheduler=Main Partition=gpu AllocNode:Sid=localhost:21105 ReqNodeList=node1 ExcNodeList=(null) NodeList= NumNodes=1-1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* TRES=cpu=1,mem=100M,node=1,billing=1 Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* MinCPUsNode=1 MinMemoryCPU=100M MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null) Command=/tmp/skbx/job.sh WorkDir=/tmp AdminComment=k8sb1:eNpNjs0OwiAQhF-l2XOxrUcSb74HAUtabPnJLkSM8d1delCPM7vzzbxAI-qncqGChFGcoYcFY0nKzSCncZx68LqqEGdLbLBy4U8F7S0H79GcaOUsFeNdVrsLzSaj823thEgaSZvdduLaDdknto7eCzcexkCbqcMXk523DGFUG8EaLalk8Whm8MJaLqnIlSfKNroQX3-bHxE3NTvk34aH9wcgIkq8  StdErr=/tmp/slurm-4_1.out StdIn=/dev/null StdOut=/tmp/slurm-4_1.out Power= TresPerNode=gres:gpu:h100:2
JobId=4 ArrayJobId=4 ArrayTaskId=0,2 JobName=job.sh UserId=bridgeuser(1001) GroupId=bridgeuser(1001) MCS_label=N/A Priority=0 Nice=0 Account=(null) QOS=(null) JobState=PENDING Reason=JobHeldUser Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:00 TimeLimit=00:10:00 TimeMin=N/A SubmitTime=2026-11-23T06:03:52 EligibleTime=Unknown AccrueTime=Unknown StartTime=Unknown EndTime=Unknown Deadline=N/A SuspendTime=None SecsPreSuspend=0 LastSchedEval=2026-11-23T06:03:52 Scheduler=Main Partition=gpu AllocNode:Sid=localhost:21105 ReqNodeList=(null) ExcNodeList=(null) NodeList= NumNodes=1-1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* TRES=cpu=1,mem=100M,node=1,billing=1 Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* MinCPUsNode=1 MinMemoryCPU=100M MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null) Command=/tmp/skbx/job.sh WorkDir=/tmp AdminComment=k8sb1:eNpNjs0OwiAQhF-l2XOxrUcSb74HAUtabPnJLkSM8d1delCPM7vzzbxAI-qncqGChFGcoYcFY0nKzSCncZx68LqqEGdLbLBy4U8F7S0H79GcaOUsFeNdVrsLzSaj823thEgaSZvdduLaDdknto7eCzcexkCbqcMXk523DGFUG8EaLalk8Whm8MJaLqnIlSfKNroQX3-bHxE3NTvk34aH9wcgIkq8  StdErr=/tmp/slurm-4_4294967294.out StdIn=/dev/null StdOut=/tmp/slurm-4_4294967294.out Power= TresPerNode=gres:gpu:h100:2
JobId=7 JobName=job.sh UserId=bridgeuser(1001) GroupId=bridgeuser(1001) MCS_label=N/A Priority=0 Nice=0 Account=(null) QOS=(null) JobState=PENDING Reason=JobHeldAdmin Dependency=afternotok:1(failed) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:00 TimeLimit=00:10:00 TimeMin=N/A SubmitTime=2026-11-23T06:06:00 EligibleTime=Unknown AccrueTime=Unknown StartTime=Unknown EndTime=Unknown Deadline=N/A SuspendTime=None SecsPreSuspend=0 LastSchedEval=2026-11-23T06:06:00 Scheduler=Main Partition=gpu AllocNode:Sid=localhost:21105 ReqNodeList=(null) ExcNodeList=(null) NodeList= NumNodes=1-1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* TRES=cpu=1,mem=100M,node=1,billing=1 Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* MinCPUsNode=1 MinMemoryCPU=100M MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null) Command=/tmp/skbx/job.sh WorkDir=/tmp AdminComment=k8sb1:eNpNj0sOwjAMRK9Sed3ShmUkdtwjShrThjYfxYkoQtwdtwtgOTP28_gFU441KWdBimEQLXi9qRAtEhusXPhTQXsECfdoTjRDC1SNd0WtLuw2GV3Guem6pDNps2LTXZu--MSWxYTBYhifF30rmEMscZHiiHtazNZ_ocV5ZCSD90qsM5JKmI8efGZiLadU5cyF5Zk3KnH6--AR86Ksyzy74-H9ARGVS4s  StdErr=/tmp/slurm-7.out StdIn=/dev/null StdOut=/tmp/slurm-7.out Power= TresPerNode=gres:gpu:h100:2
JobId=10 JobName=evil
JobId=12345 JobName=x UserId=bridgeuser(1001) GroupId=bridgeuser(1001) MCS_label=N/A Priority=0 Nice=0 Account=(null) QOS=(null) JobState=PENDING Reason=JobHeldUser Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:00 TimeLimit=UNLIMITED TimeMin=N/A SubmitTime=2026-11-23T06:10:13 EligibleTime=Unknown AccrueTime=Unknown StartTime=Unknown EndTime=Unknown Deadline=N/A SuspendTime=None SecsPreSuspend=0 LastSchedEval=2026-11-23T06:10:13 Scheduler=Main Partition=cpu AllocNode:Sid=localhost:21105 ReqNodeList=(null) ExcNodeList=(null) NodeList= NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* TRES=cpu=1,mem=100M,node=1,billing=1 Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* MinCPUsNode=1 MinMemoryCPU=100M MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null) Command=(null) WorkDir=/tmp Comment=c1
JobId=777  AdminComment=k8sb1:forged  x  StdErr=/dev/null StdIn=/dev/null StdOut=/dev/null Power=
JobId=11 JobName=sleep.sh UserId=bridgeuser(1001) GroupId=bridgeuser(1001) MCS_label=N/A Priority=0 Nice=0 Account=(null) QOS=(null) JobState=CANCELLED Reason=job_requeued_in_held_state Dependency=(null) Requeue=1 Restarts=1 BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:00 TimeLimit=00:10:00 TimeMin=N/A SubmitTime=2026-11-23T06:11:01 EligibleTime=2026-11-23T06:13:02 AccrueTime=2026-11-23T06:13:02 StartTime=2026-11-23T06:11:04 EndTime=2026-11-23T06:11:04 Deadline=N/A SuspendTime=None SecsPreSuspend=0 LastSchedEval=2026-11-23T06:10:59 Scheduler=Main Partition=gpu AllocNode:Sid=localhost:21105 ReqNodeList=pod-a ExcNodeList=(null) NodeList= NumNodes=1 NumCPUs=1 NumTasks=N/A CPUs/Task=1 ReqB:S:C:T=0:0:*:* TRES=cpu=1,mem=100M,node=1,billing=1 Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* MinCPUsNode=1 MinMemoryCPU=100M MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null) Command=/tmp/skbx/sleep.sh WorkDir=/tmp AdminComment=k8sb1:eNpNjksOwyAMRK-CvC4l2bLuPRAUK0HhJwxtpKp3r5NNs3wz9sx8YGllVBM86Hma5hsku5tcPBILTCFfKNuEoIEiYr3TCjeg4VLoJoZ8Gs725yqkrLaRdRGFfAjVUxWyCOXxpfKI8VQUbW5Xl6QeEnIOpx1LmBuSqdjOes5emPVSh155p575YxC7_-Hv0jbjQ-PbowC-PzvXR_w  Comment=it's a "test" x=y  two  spaces Comment=z  StdErr=/dev/null StdIn=/dev/null StdOut=/dev/null Power= TresPerNode=gres:gpu:h100:1
JobId=14 JobName=forged-comment UserId=bridgeuser(1001) GroupId=bridgeuser(1001) MCS_label=N/A Priority=0 Nice=0 Account=(null) QOS=(null) JobState=PENDING Reason=JobHeldUser Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:00 TimeLimit=UNLIMITED TimeMin=N/A SubmitTime=2026-11-23T06:13:44 EligibleTime=Unknown AccrueTime=Unknown StartTime=Unknown EndTime=Unknown Deadline=N/A SuspendTime=None SecsPreSuspend=0 LastSchedEval=2026-11-23T06:13:44 Scheduler=Main Partition=cpu AllocNode:Sid=localhost:21105 ReqNodeList=(null) ExcNodeList=(null) NodeList= NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* TRES=cpu=1,mem=100M,node=1,billing=1 Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* MinCPUsNode=1 MinMemoryCPU=100M MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null) Command=(null) WorkDir=/tmp Comment=x  AdminComment=k8sb1:eNpNjksOwjAMBa9Sed3ShmUkdtwjShrThjYfxYkoQtwdtwtg-Z7t8bxgyrEm5SxIMQyiBa83FaJF4oKTC38paI8g4R7NiWZogarxrqjVhb0mo8s4N12XdCZtVmy6a9MXn7iymDBYDOPzom8Fc1ykOGY9LWbrv8TiPDKPqbsP54ykEuZDgn9MnOWUqpzZVp75ohJPf_qPmBdlXebdHQ_vDwvtSjo  StdErr=/dev/null StdIn=/dev/null StdOut=/dev/null Power=
JobId=15 JobName=forged-name
JobId=2 JobName=evil UserId=root(0) Priority=1 JobState=RUNNING Reason=None Dependency=(null) Partition=gpu ReqNodeList=node1 AdminComment=k8sb1:eNpNjksOwjAMBa9Sed3ShmUkdtwjShrThjYfxYkoQtwdtwtg-Z7t8bxgyrEm5SxIMQyiBa83FaJF4oKTC38paI8g4R7NiWZogarxrqjVhb0mo8s4N12XdCZtVmy6a9MXn7iymDBYDOPzom8Fc1ykOGY9LWbrv8TiPDKPqbsP54ykEuZDgn9MnOWUqpzZVp75ohJPf_qPmBdlXebdHQ_vDwvtSjo  Comment=pwned  UserId=bridgeuser(1001) GroupId=bridgeuser(1001) MCS_label=N/A Priority=0 Nice=0 Account=(null) QOS=(null) JobState=PENDING Reason=JobHeldUser Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:00 TimeLimit=UNLIMITED TimeMin=N/A SubmitTime=2026-11-23T06:13:44 EligibleTime=Unknown AccrueTime=Unknown StartTime=Unknown EndTime=Unknown Deadline=N/A SuspendTime=None SecsPreSuspend=0 LastSchedEval=2026-11-23T06:13:44 Scheduler=Main Partition=cpu AllocNode:Sid=localhost:21105 ReqNodeList=(null) ExcNodeList=(null) NodeList= NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* TRES=cpu=1,mem=100M,node=1,billing=1 Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* MinCPUsNode=1 MinMemoryCPU=100M MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null) Command=(null) WorkDir=/tmp StdErr=/dev/null StdIn=/dev/null StdOut=/dev/null Power=
"""

SQUEUE_ROWS = """\
15|15|N/A|1001|bridgeuser|PENDING|JobHeldUser|0|(null)|N/A|2026-11-23T06:13:44|cpu|UNLIMITED|0|1|0|||(null)
14|14|N/A|1001|bridgeuser|PENDING|JobHeldUser|0|(null)|N/A|2026-11-23T06:13:44|cpu|UNLIMITED|0|1|0|||(null)
10|10|N/A|1001|bridgeuser|PENDING|JobHeldUser|0|(null)|N/A|2026-11-23T06:10:13|cpu|UNLIMITED|0|1|0|||(null)
11|11|N/A|1001|bridgeuser|CANCELLED|job requeued in held state|0|(null)|2026-11-23T06:13:02|2026-11-23T06:11:01|gpu|10:00|0|1|1|pod-a||k8sb1:eNpNjksOwyAMRK-CvC4l2bLuPRAUK0HhJwxtpKp3r5NNs3wz9sx8YGllVBM86Hma5hsku5tcPBILTCFfKNuEoIEiYr3TCjeg4VLoJoZ8Gs725yqkrLaRdRGFfAjVUxWyCOXxpfKI8VQUbW5Xl6QeEnIOpx1LmBuSqdjOes5emPVSh155p575YxC7_-Hv0jbjQ-PbowC-PzvXR_w
3|3|N/A|1001|bridgeuser|PENDING|JobHeldUser|0|(null)|2026-11-23T07:03:52|2026-11-23T06:03:52|gpu|10:00|0|1|0|||k8sb1:eNpdjz0OwjAMha8SZaWhLWMkNiYuESWtlYSSH8WJWglxd9wuICbr-dmf_V7cltSy8jOX4zCMHQ96UzHNgNQg5eOPijoAl0dhq6-OYdYT8I5jM8FX9fRx99HoOjkmRNYFtXkCEzfW15CpZcD6eI1pPY0utcLEnf3hjskeF7P1j2TO6IhffQCi0439TdIFUGUox2900ZKWNjfpKIS80EZDcr-p1lQWNftCszuevz894lH8
7|7|N/A|1001|bridgeuser|PENDING|JobHeldAdmin|0|afternotok:1(failed)|N/A|2026-11-23T06:06:00|gpu|10:00|0|1|0|||k8sb1:eNpNj0sOwjAMRK9Sed3ShmUkdtwjShrThjYfxYkoQtwdtwtgOTP28_gFU441KWdBimEQLXi9qRAtEhusXPhTQXsECfdoTjRDC1SNd0WtLuw2GV3Guem6pDNps2LTXZu--MSWxYTBYhifF30rmEMscZHiiHtazNZ_ocV5ZCSD90qsM5JKmI8efGZiLadU5cyF5Zk3KnH6--AR86Ksyzy74-H9ARGVS4s
4|4|0|1001|bridgeuser|PENDING|JobHeldUser|0|(null)|N/A|2026-11-23T06:03:52|gpu|10:00|0|1|0|||k8sb1:eNpNjs0OwiAQhF-l2XOxrUcSb74HAUtabPnJLkSM8d1delCPM7vzzbxAI-qncqGChFGcoYcFY0nKzSCncZx68LqqEGdLbLBy4U8F7S0H79GcaOUsFeNdVrsLzSaj823thEgaSZvdduLaDdknto7eCzcexkCbqcMXk523DGFUG8EaLalk8Whm8MJaLqnIlSfKNroQX3-bHxE3NTvk34aH9wcgIkq8
4|4|2|1001|bridgeuser|PENDING|JobHeldUser|0|(null)|N/A|2026-11-23T06:03:52|gpu|10:00|0|1|0|||k8sb1:eNpNjs0OwiAQhF-l2XOxrUcSb74HAUtabPnJLkSM8d1delCPM7vzzbxAI-qncqGChFGcoYcFY0nKzSCncZx68LqqEGdLbLBy4U8F7S0H79GcaOUsFeNdVrsLzSaj823thEgaSZvdduLaDdknto7eCzcexkCbqcMXk523DGFUG8EaLalk8Whm8MJaLqnIlSfKNroQX3-bHxE3NTvk34aH9wcgIkq8
5|4|1|1001|bridgeuser|PENDING|JobHeldUser|0|(null)|N/A|2026-11-23T06:03:52|gpu|10:00|0|1|0|node1||k8sb1:eNpNjs0OwiAQhF-l2XOxrUcSb74HAUtabPnJLkSM8d1delCPM7vzzbxAI-qncqGChFGcoYcFY0nKzSCncZx68LqqEGdLbLBy4U8F7S0H79GcaOUsFeNdVrsLzSaj823thEgaSZvdduLaDdknto7eCzcexkCbqcMXk523DGFUG8EaLalk8Whm8MJaLqnIlSfKNroQX3-bHxE3NTvk34aH9wcgIkq8
2|2|N/A|1001|bridgeuser|PENDING|JobHeldUser|0|(null)|N/A|2026-11-23T06:03:52|gpu|10:00|0|1|0|||k8sb1:eNpNjksOwjAMBa9Sed3ShmUkdtwjShrThjYfxYkoQtwdtwtg-Z7t8bxgyrEm5SxIMQyiBa83FaJF4oKTC38paI8g4R7NiWZogarxrqjVhb0mo8s4N12XdCZtVmy6a9MXn7iymDBYDOPzom8Fc1ykOGY9LWbrv8TiPDKPqbsP54ykEuZDgn9MnOWUqpzZVp75ohJPf_qPmBdlXebdHQ_vDwvtSjo
"""

SCONTROL_NODES = """\
NodeName=node1 Arch=x86_64 CoresPerSocket=4  CPUAlloc=0 CPUEfctv=4 CPUTot=4 CPULoad=0.95 AvailableFeatures=(null) ActiveFeatures=(null) Gres=gpu:4 NodeAddr=10.77.100.11 NodeHostName=node1 Version=22.05.8 OS=Linux 6.18.44-fc-v669 #1 SMP PREEMPT_DYNAMIC @0  RealMemory=4000 AllocMem=0 FreeMem=22280 Sockets=1 Boards=1 State=IDLE ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A Partitions=cpu  BootTime=2026-11-23T05:18:38 SlurmdStartTime=2026-11-23T06:02:03 LastBusyTime=2026-11-23T06:11:04 CfgTRES=cpu=4,mem=4000M,billing=4 AllocTRES= CapWatts=n/a CurrentWatts=0 AveWatts=0 ExtSensorsJoules=n/s ExtSensorsWatts=0 ExtSensorsTemp=n/s
NodeName=node2 Arch=x86_64 CoresPerSocket=4  CPUAlloc=0 CPUEfctv=4 CPUTot=4 CPULoad=0.95 AvailableFeatures=(null) ActiveFeatures=(null) Gres=gpu:4 NodeAddr=10.77.100.12 NodeHostName=node2 Version=22.05.8 OS=Linux 6.18.44-fc-v669 #1 SMP PREEMPT_DYNAMIC @0  RealMemory=4000 AllocMem=0 FreeMem=22280 Sockets=1 Boards=1 State=IDLE+DRAIN ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A Partitions=cpu  BootTime=2026-11-23T05:18:38 SlurmdStartTime=2026-11-23T06:02:03 LastBusyTime=2026-11-23T06:08:24 CfgTRES=cpu=4,mem=4000M,billing=4 AllocTRES= CapWatts=n/a CurrentWatts=0 AveWatts=0 ExtSensorsJoules=n/s ExtSensorsWatts=0 ExtSensorsTemp=n/s Reason=r [x] Extra=z [root@2026-11-23T06:13:50] Comment=c1 Reason=fake [a@2020-01-01T00:00:00] Extra=e1  x=y
NodeName=slurm-inv-a100-0 CoresPerSocket=1  CPUAlloc=0 CPUEfctv=128 CPUTot=128 CPULoad=N/A AvailableFeatures=a100,ampere,ib ActiveFeatures=a100,ampere,ib Gres=gpu:a100:8,gpu:1g.10gb:56,gpu:3g.40gb:16,gpu:7g.80gb:8 NodeAddr=slurm-inv-a100-0 NodeHostName=slurm-inv-a100-0  RealMemory=1024000 AllocMem=0 FreeMem=N/A Sockets=128 Boards=1 State=IDLE+CLOUD+POWERED_DOWN ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A Partitions=gpu  BootTime=None SlurmdStartTime=None LastBusyTime=Unknown CfgTRES=cpu=128,mem=1000G,billing=128 AllocTRES= CapWatts=n/a CurrentWatts=0 AveWatts=0 ExtSensorsJoules=n/s ExtSensorsWatts=0 ExtSensorsTemp=n/s
NodeName=k8s-gpu-node-a CoresPerSocket=1  CPUAlloc=0 CPUEfctv=64 CPUTot=64 CPULoad=N/A AvailableFeatures=k8s-node,h100 ActiveFeatures=k8s-node,h100 Gres=gpu:h100:4 NodeAddr=k8s-gpu-node-a NodeHostName=k8s-gpu-node-a  RealMemory=500000 AllocMem=0 FreeMem=N/A Sockets=64 Boards=1 State=DOWN+CLOUD+DYNAMIC_NORM+POWERED_DOWN+NOT_RESPONDING ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A Partitions=gpu  BootTime=None SlurmdStartTime=None LastBusyTime=Unknown CfgTRES=cpu=64,mem=500000M,billing=64 AllocTRES= CapWatts=n/a CurrentWatts=0 AveWatts=0 ExtSensorsJoules=n/s ExtSensorsWatts=0 ExtSensorsTemp=n/s Reason=NotReady: KubeletNotReady [root@2026-11-23T06:13:50] Comment=a b  Reason=zz
NodeName=k8s-gpu-node-b CoresPerSocket=1  CPUAlloc=0 CPUEfctv=32 CPUTot=32 CPULoad=N/A AvailableFeatures=k8s-node,a100 ActiveFeatures=k8s-node,a100 Gres=gpu:a100:4 NodeAddr=k8s-gpu-node-b NodeHostName=k8s-gpu-node-b  RealMemory=200000 AllocMem=0 FreeMem=N/A Sockets=32 Boards=1 State=IDLE+CLOUD+DRAIN+DYNAMIC_NORM+POWERED_DOWN ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A Partitions=gpu  BootTime=None SlurmdStartTime=None LastBusyTime=Unknown CfgTRES=cpu=32,mem=200000M,billing=32 AllocTRES= CapWatts=n/a CurrentWatts=0 AveWatts=0 ExtSensorsJoules=n/s ExtSensorsWatts=0 ExtSensorsTemp=n/s Reason=cordoned (kubectl cordon) [root@2026-11-23T06:08:19]
"""



def _jobs() -> dict[str, SlurmJob]:
    jobs = merge_jobs(parse_scontrol_jobs(SCONTROL_JOBS), parse_squeue_rows(SQUEUE_ROWS))
    return {j.slurm_id: j for j in jobs}


# -- parsing (no daemons) ------------------------------------------------------------------
@pytest.mark.unit
def test_naive_parse_of_scontrol_output_is_forgeable():
    """Why bridged_jobs cross-checks squeue: parse_key_values alone sees stamps that
    job_submit never wrote."""
    records = parse_scontrol_jobs(SCONTROL_JOBS)
    assert is_stamp(records[14][0]["AdminComment"])            # a cpu job, via --comment
    assert records[14][0]["Partition"] == "cpu"
    assert is_stamp(records[777][0]["AdminComment"])           # no such job
    assert len(records[2]) == 2                                # job 15's name forged a 2nd
    assert records[2][1]["UserId"] == "root(0)" and records[2][1]["JobState"] == "RUNNING"


@pytest.mark.unit
def test_merged_jobs_are_exactly_the_stamped_ones_with_squeue_values():
    jobs = _jobs()
    assert sorted(jobs) == ["11", "2", "3", "4", "4_1", "7"]
    two = jobs["2"]
    assert (two.user_id, two.user_name, two.state, two.reason, two.priority) == \
        (1001, USER, "PENDING", "JobHeldUser", 0)
    assert two.req_nodelist == "" and two.nodelist == "" and two.partition == "gpu"
    assert (two.name, two.comment) == ("", "")  # two scontrol records claim job 2
    assert two.stamp.startswith("k8sb1:") and two.request().partition in (None, "gpu")
    three = jobs["3"]
    assert three.name == "name with space" and three.begin_time == "2026-11-23T07:03:52"
    assert (three.time_limit, three.exit_code, three.requeue, three.restarts) == \
        ("10:00", "0:0", True, 0)
    meta = jobs["4"]
    assert (meta.job_id, meta.array_job_id, meta.array_task_id) == (4, 4, None)
    assert meta.is_array_meta and meta.pending_array_tasks == (0, 2)
    assert meta.task_refs() == ["4_0", "4_2"]
    task = jobs["4_1"]
    assert (task.job_id, task.array_job_id, task.array_task_id) == (5, 4, 1)
    assert not task.is_array_meta and task.req_nodelist == "node1"
    assert jobs["7"].dependency == "afternotok:1(failed)" and jobs["7"].reason == "JobHeldAdmin"
    eleven = jobs["11"]
    assert eleven.comment == "it's a \"test\" x=y  two  spaces Comment=z"
    assert (eleven.state, eleven.reason, eleven.restarts) == \
        ("CANCELLED", "job requeued in held state", 1)


@pytest.mark.unit
def test_eligibility_rules():
    jobs = _jobs()
    assert eligible(jobs["2"]) == (True, "eligible")
    ok, why = eligible(jobs["7"])
    assert not ok and why == "dependency can never be satisfied: afternotok:1(failed)"
    before = datetime(2026, 11, 23, 7, 0, 0)
    assert eligible(jobs["3"], now=before) == \
        (False, "begin time 2026-11-23T07:03:52 not reached")
    assert eligible(jobs["3"], now=datetime(2026, 11, 23, 7, 4, 0))[0]
    assert eligible(jobs["11"]) == (False, "not pending (CANCELLED)")
    waiting = dataclasses.replace(jobs["2"], dependency="afterok:1(unfulfilled)")
    assert eligible(waiting) == (False, "waiting for dependency afterok:1(unfulfilled)")
    owner = dataclasses.replace(jobs["2"], stamp=jobs["2"].request().replace(
        user_hold=True).stamp())
    assert eligible(owner)[1].startswith("held by its owner")
    admin = dataclasses.replace(jobs["2"], reason="JobHeldAdmin")
    assert eligible(admin) == (False, "held by an administrator (scontrol hold)")


@pytest.mark.unit
def test_pending_order_is_submit_time_then_job_then_task():
    order = [j.slurm_id for j in pending_order(_jobs().values())]
    assert order == ["2", "3", "4", "4_1", "7"]


@pytest.mark.unit
def test_small_parsers():
    assert expand_array_tasks("0-2") == (0, 1, 2)
    assert expand_array_tasks("0,2") == (0, 2)
    assert expand_array_tasks("1-9:4%2") == (1, 5, 9)
    assert expand_array_tasks("N/A") == ()
    assert [format_exit_code(x) for x in ("0", "768", "9")] == ["0:0", "3:0", "0:9"]
    # squeue rows with missing columns or non-numeric ids are dropped
    assert parse_squeue_rows("garbage\n1|2|3\n") == {}


@pytest.mark.unit
def test_node_records():
    nodes = parse_nodes(SCONTROL_NODES)
    assert sorted(nodes) == ["k8s-gpu-node-a", "k8s-gpu-node-b", "node1", "node2",
                             "slurm-inv-a100-0"]
    n1 = nodes["node1"]
    assert (n1.state, n1.cpus, n1.real_memory_mb, n1.gres, n1.partitions, n1.reason) == \
        ("IDLE", 4, 4000, "gpu:4", ("cpu",), "")
    n2 = nodes["node2"]
    assert n2.drained and n2.reason == "r [x] Extra=z" and n2.reason_user == "root"
    assert n2.comment == "c1 Reason=fake [a@2020-01-01T00:00:00]" and n2.extra == "e1  x=y"
    a = nodes["k8s-gpu-node-a"]
    assert a.down and a.base_state == "DOWN"
    assert {"CLOUD", "POWERED_DOWN", "DYNAMIC_NORM"} <= a.flags
    assert (a.reason, a.comment, a.gres, a.features, a.partitions) == \
        ("NotReady: KubeletNotReady", "a b  Reason=zz", "gpu:h100:4", ("k8s-node", "h100"),
         ("gpu",))
    b = nodes["k8s-gpu-node-b"]
    assert b.drained and not b.down and b.reason == "cordoned (kubectl cordon)"
    assert b.reason_time == "2026-11-23T06:08:19" and b.comment == ""
    inv = nodes["slurm-inv-a100-0"]
    assert inv.gres.startswith("gpu:a100:8,") and inv.flags == {"CLOUD", "POWERED_DOWN"}


@pytest.mark.unit
def test_every_command_is_bounded_and_failures_carry_rc_and_stderr():
    client = SlurmClient({}, timeout=0.5)
    start = time.monotonic()
    with pytest.raises(SlurmCommandError) as exc:
        client.run(["sleep", "30"])
    assert time.monotonic() - start < 5
    assert exc.value.rc == -1 and "timed out" in exc.value.stderr
    with pytest.raises(SlurmCommandError) as exc:
        client.run(["sh", "-c", "echo nope >&2; exit 3"])
    assert (exc.value.rc, exc.value.stderr) == (3, "nope")
    with pytest.raises(ValueError):
        client.set_comment("12; rm", "x")
    with pytest.raises(ValueError):
        client.set_comment(1, "two\nlines")


# -- real daemons --------------------------------------------------------------------------
@dataclasses.dataclass
class Env:
    bridge: object
    cluster: object
    client: SlurmClient
    uid: int


@pytest.fixture(scope="module")
def env():
    require_root()
    base = make_base_dir("client")
    bridge = make_bridge_cluster(base, "client", extra_conf=["MaxNodeCount=64"])
    cluster = bridge.cluster
    cluster.start()
    uid, _ = cluster.ensure_user(USER)
    try:
        yield Env(bridge, cluster, SlurmClient(cluster.env(), timeout=15), uid)
    finally:
        cluster.stop()
        remove_base_dir(cluster)


GPU_SCRIPT = "#!/bin/bash\n#SBATCH -N1 --gres=gpu:h100:2 --time=5\nhostname\n"


def submit(env, *args, script=GPU_SCRIPT, user=USER) -> int:
    return env.cluster.submit(["-o", "/dev/null", *args], script=script, user=user)


def by_id(env) -> dict[str, SlurmJob]:
    return {j.slurm_id: j for j in env.client.bridged_jobs()}


def scancel(env, *jobs) -> None:
    env.cluster.run(["scancel", *[str(j) for j in jobs]], check=True)


def wait_for(pred, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")


@pytest.mark.slurm
def test_bridged_jobs_lists_stamped_jobs_only(env):
    a = submit(env, "-J", "first")
    b = submit(env, "-J", "second", "--comment", "user words")
    arr = submit(env, "-J", "arr", "--array=0-2")
    stamp_a = env.cluster.show_job(a)["AdminComment"]
    # a job of the non-bridged partition forging job a's stamp two ways
    forged_name = (f"f\nJobId={a} JobName=evil UserId=root(0) JobState=RUNNING "
                   f"AdminComment={stamp_a}  Comment=pwned ")
    forged = env.cluster.submit(
        ["-p", "cpu", "-H", "-o", "/dev/null", "--comment", f"x  AdminComment={stamp_a}",
         "-J", forged_name, "--wrap", "true"], user=USER)
    assert is_stamp(parse_key_values(
        env.cluster.run(["scontrol", "show", "job", "-o", str(forged)]).stdout)["AdminComment"])

    jobs = by_id(env)
    assert str(forged) not in jobs
    ja, jb = jobs[str(a)], jobs[str(b)]
    assert ja.stamp == stamp_a and jb.stamp == env.cluster.show_job(b)["AdminComment"]
    for job in (ja, jb):
        assert (job.user_id, job.state, job.priority, job.reason, job.partition) == \
            (env.uid, "PENDING", 0, "JobHeldUser", "gpu")
        assert job.request().user_id == env.uid and job.request().tres_per_node == \
            "gres:gpu:h100:2"
    assert ja.name in ("first", "")                      # "" when a forged line matches
    assert (jb.name, jb.comment) == ("second", "user words")
    meta = jobs[str(arr)]
    assert meta.pending_array_tasks == (0, 1, 2) and meta.array_task_id is None
    assert meta.task_refs() == [f"{arr}_0", f"{arr}_1", f"{arr}_2"]

    # updating one task splits it out of the pending array
    env.client.set_comment(f"{arr}_1", "task one")
    jobs = by_id(env)
    assert jobs[str(arr)].pending_array_tasks == (0, 2)
    task = jobs[f"{arr}_1"]
    assert (task.array_job_id, task.array_task_id, task.comment) == (arr, 1, "task one")
    assert task.job_id != arr
    order = [j.slurm_id for j in pending_order(jobs.values())
             if j.job_id in (a, b, arr, task.job_id)]
    assert order == [str(a), str(b), str(arr), f"{arr}_1"]
    scancel(env, a, b, arr, forged)


@pytest.mark.slurm
def test_set_comment_shows_in_squeue(env):
    job = submit(env)
    text = "k8s: waiting for pods 0/2 \"Unschedulable\": it's 0/3 nodes x=y"
    env.client.set_comment(job, text)
    out = env.cluster.run(["squeue", "-h", "-j", str(job), "-o", "%k"], check=True).stdout
    assert out.rstrip("\n") == text
    assert by_id(env)[str(job)].comment == text
    scancel(env, job)


@pytest.mark.slurm
def test_eligibility_on_real_jobs(env):
    first = submit(env)
    after_pending = submit(env, f"--dependency=afterok:{first}")
    later = submit(env, "--begin=now+1hour")
    gate = env.cluster.submit(["-p", "cpu", "-H", "-o", "/dev/null", "--wrap", "true"])
    will_run = submit(env, f"--dependency=afterok:{gate}")
    never = submit(env, f"--dependency=afternotok:{gate}")
    jobs = by_id(env)
    assert eligible(jobs[str(first)]) == (True, "eligible")
    ok, why = eligible(jobs[str(after_pending)])
    assert not ok and why == f"waiting for dependency afterok:{first}(unfulfilled)"
    ok, why = eligible(jobs[str(later)])
    assert not ok and why.startswith("begin time ") and why.endswith(" not reached")
    assert jobs[str(later)].reason == "JobHeldUser" and jobs[str(later)].begin_time

    # the owner's hold (recorded in the stamp by job_modify) and an administrator's hold
    assert env.cluster.scontrol("hold", str(first), user=USER).returncode == 0
    assert eligible(by_id(env)[str(first)])[1].startswith("held by its owner")
    assert env.cluster.scontrol("release", str(first), user=USER).returncode == 0
    assert eligible(by_id(env)[str(first)]) == (True, "eligible")
    env.cluster.scontrol("hold", str(first), check=True)
    held = by_id(env)[str(first)]
    assert held.reason == "JobHeldAdmin"
    assert eligible(held) == (False, "held by an administrator (scontrol hold)")
    env.client.hold(first)      # the bridge's own hold: what job_submit set
    held = by_id(env)[str(first)]
    assert (held.reason, held.priority) == ("JobHeldUser", 0)
    assert eligible(held) == (True, "eligible")

    # slurmctld re-evaluates the dependencies of held jobs within a scheduling cycle
    env.cluster.scontrol("release", str(gate), check=True)
    assert env.cluster.wait_job_state(gate, "COMPLETED", timeout=60) == "COMPLETED"

    def settled():
        jobs = by_id(env)
        a, b = jobs[str(will_run)], jobs[str(never)]
        return (a, b) if a.dependency is None and b.dependency and "(failed)" in b.dependency \
            else None
    a, b = wait_for(settled, 150, "dependencies re-evaluated", interval=2)
    assert eligible(a) == (True, "eligible")
    assert eligible(b) == (False, f"dependency can never be satisfied: afternotok:{gate}(failed)")
    assert b.reason == "JobHeldAdmin"   # 22.05 turns a held job's failed dependency into this
    scancel(env, first, after_pending, later, will_run, never)


POD_CONF = ("Sockets=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=2000 Gres=gpu:h100:2 "
            "Feature=k8s-pod,h100")


@pytest.mark.slurm
def test_pin_and_release_runs_on_a_pod_node_and_requeue_paths(env):
    env.cluster.start_dynamic_slurmd("pod-1", POD_CONF, netns_index=10, timeout=60)
    try:
        node = env.client.list_nodes()["pod-1"]
        assert node.partitions == ("gpu",) and node.gres == "gpu:h100:2"
        out = env.cluster.jobs_dir / "pinned.out"
        job = env.cluster.submit(
            ["-o", str(out)], user=USER,
            script="#!/bin/bash\n#SBATCH -N1 --gres=gpu:h100:2 --time=5\n"
                   "echo HOST=$(hostname) CVD=$CUDA_VISIBLE_DEVICES\n")
        env.client.set_comment(job, "k8s: pods running, releasing")
        env.client.pin_and_release(job, ["pod-1"])
        assert env.cluster.wait_job_state(job, ("COMPLETED", "FAILED", "CANCELLED"),
                                          timeout=60) == "COMPLETED"
        done = by_id(env)[str(job)]
        assert (done.nodelist, done.req_nodelist, done.exit_code) == ("pod-1", "pod-1", "0:0")
        assert out.read_text().split() == ["HOST=pod-1", "CVD=0,1"]

        # requeue paths on a running job
        job = submit(env, script="#!/bin/bash\n#SBATCH -N1 --gres=gpu:h100:1 --time=5\n"
                                 "sleep 120\n")
        env.client.pin_and_release(job, ["pod-1"])
        env.cluster.wait_job_state(job, "RUNNING", timeout=60)
        env.client.requeue_hold(job)
        env.cluster.wait_job_state(job, "PENDING", timeout=60)
        j = by_id(env)[str(job)]
        assert (j.priority, j.reason, j.req_nodelist, j.restarts) == \
            (0, "job requeued in held state", "", 1)
        # slurmctld delays a requeued job (EligibleTime = now + the credential lifetime);
        # the bridge starts it on fresh pods at once, so that delay does not count
        assert j.begin_time and eligible(j) == (True, "eligible")
        begin = datetime.strptime(j.begin_time, "%Y-%m-%dT%H:%M:%S")
        assert not eligible(j, now=begin - timedelta(seconds=REQUEUE_DELAY_MAX_S + 60))[0]
        # the same slurmd refuses a credential created in the second it revoked the old
        # one ("Job credential revoked": the job FAILS); new pods have new slurmd
        time.sleep(2)
        env.client.pin_and_release(job, ["pod-1"], start_now=True)
        env.cluster.wait_job_state(job, "RUNNING", timeout=60)
        env.client.requeue(job)     # plain requeue: pending again but *not* held
        env.cluster.wait_job_state(job, "PENDING", timeout=60)
        j = by_id(env)[str(job)]
        assert j.priority > 0 and j.restarts == 2 and j.req_nodelist == "pod-1"
        env.client.hold(job)
        j = by_id(env)[str(job)]
        assert (j.priority, j.reason) == (0, "JobHeldUser")
        env.client.fail_job(job, "pods lost: node gpu-7 NotReady")
        j = by_id(env)[str(job)]
        assert j.state == "CANCELLED"
        assert j.comment == "k8s-bridge: failed: pods lost: node gpu-7 NotReady"
    finally:
        env.cluster.stop_slurmd("pod-1", delete_node=True)
    assert "pod-1" not in env.client.list_nodes()


def sinfo(env) -> dict[str, list[str]]:
    out = env.cluster.run(["sinfo", "-N", "-h", "-o", "%N|%t|%E|%G|%P"], check=True).stdout
    return {l.split("|")[0]: l.split("|")[1:] for l in out.splitlines()}


@pytest.mark.slurm
def test_cloud_node_mirroring(env):
    c = env.client
    name = "k8s-gpu-worker-7"
    node = c.create_cloud_node(name, 64, 500000, "gpu:h100:8", ["k8s-node", "h100"])
    assert node.partitions == ("gpu",) and {"CLOUD", "POWERED_DOWN"} <= node.flags
    assert sinfo(env)[name] == ["idle~", "none", "gpu:h100:8", "gpu*"]
    with pytest.raises(SlurmCommandError, match="already exists"):
        c.create_cloud_node(name, 64, 500000, "gpu:h100:8", ["k8s-node"])

    c.node_drain(name, "Kubernetes: cordoned (kubectl cordon gpu-worker-7)")
    assert sinfo(env)[name][:2] == ["drain~", "Kubernetes: cordoned (kubectl cordon gpu-worker-7)"]
    why = "Kubernetes: NotReady (KubeletNotReady: PLEG is not healthy)"
    c.node_down(name, why)
    assert sinfo(env)[name][:2] == ["drain~", why]   # DOWN+DRAIN shows as drain
    c.set_node_state(name, "idle")
    assert sinfo(env)[name][:2] == ["idle~", "none"]
    c.node_down(name, "Kubernetes: NotReady")
    n = c.list_nodes()[name]
    assert n.down and not n.drained and n.reason == "Kubernetes: NotReady"
    assert sinfo(env)[name][:2] == ["down~", "Kubernetes: NotReady"]
    c.node_resume(name)
    assert sinfo(env)[name][:2] == ["idle~", "none"]
    c.node_resume(name)                     # already idle: no error

    # the GPU count cannot be updated; delete and create again
    with pytest.raises(SlurmCommandError, match="Invalid generic resource"):
        c.scontrol("update", f"nodename={name}", "gres=gpu:h100:4")
    c.recreate_cloud_node(name, 64, 500000, "gpu:h100:4", ["k8s-node", "h100"])
    assert sinfo(env)[name] == ["idle~", "none", "gpu:h100:4", "gpu*"]

    # it survives a slurmctld restart (state file), drained with its reason
    c.node_drain(name, "Kubernetes: cordoned")
    env.cluster.restart_slurmctld()
    n = c.list_nodes()[name]
    assert n.drained and n.reason == "Kubernetes: cordoned" and n.gres == "gpu:h100:4"
    assert sinfo(env)[name] == ["drain~", "Kubernetes: cordoned", "gpu:h100:4", "gpu*"]

    c.delete_node(name)
    assert name not in c.list_nodes() and name not in sinfo(env)
    assert c.node(name) is None


@pytest.mark.slurm
def test_create_reports_a_full_node_table(env):
    """22.05's scontrol create answers rc 0 when slurmctld had no room (MaxNodeCount)."""
    c = env.client
    free = 64 - len(c.list_nodes())
    assert free > 0
    names = [f"k8s-fill-{i}" for i in range(free)]
    try:
        for name in names:
            c.create_cloud_node(name, 1, 100, "", [])
        with pytest.raises(SlurmCommandError, match="MaxNodeCount"):
            c.create_cloud_node("k8s-one-too-many", 1, 100, "", [])
    finally:
        present = [n for n in names if n in c.list_nodes()]
        if present:
            c.delete_node(f"k8s-fill-[0-{free - 1}]")
    assert not [n for n in c.list_nodes() if n.startswith("k8s-fill-")]
    c.create_cloud_node("k8s-after-delete", 1, 100, "", [])   # deleted slots are reused
    c.delete_node("k8s-after-delete")


@pytest.mark.slurm
def test_errors_name_the_command(env):
    with pytest.raises(SlurmCommandError) as exc:
        env.client.set_comment(999999, "x")
    assert exc.value.rc != 0 and "Invalid job id" in exc.value.stderr
    assert exc.value.cmd[:3] == ["scontrol", "update", "jobid=999999"]
    with pytest.raises(ValueError):
        env.client.node_drain("k8s-x", "")
