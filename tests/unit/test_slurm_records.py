"""slurm/records.py and SlurmClient's bounds against captured Slurm 22.05 output, no daemons.

The parser tests replay text captured from Debian's Slurm 22.05.8 (``scontrol -a show job
-o``, the client's ``squeue`` columns, ``scontrol -a show node -o``), including records a
user forged through newlines and ``  AdminComment=`` in their own free-text fields. The
same client against real slurmctld/slurmd: tests/slurm/test_slurm_client.py.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime

import pytest

from slurm_k8s_bridge.core.request import is_stamp
from slurm_k8s_bridge.slurm.client import SlurmClient, SlurmCommandError
from slurm_k8s_bridge.slurm.records import (
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

pytestmark = pytest.mark.unit

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
def test_naive_parse_of_scontrol_output_is_forgeable():
    """Why bridged_jobs cross-checks squeue: parse_key_values alone sees stamps that
    job_submit never wrote."""
    records = parse_scontrol_jobs(SCONTROL_JOBS)
    assert is_stamp(records[14][0]["AdminComment"])            # a cpu job, via --comment
    assert records[14][0]["Partition"] == "cpu"
    assert is_stamp(records[777][0]["AdminComment"])           # no such job
    assert len(records[2]) == 2                                # job 15's name forged a 2nd
    assert records[2][1]["UserId"] == "root(0)" and records[2][1]["JobState"] == "RUNNING"


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


def test_pending_order_is_submit_time_then_job_then_task():
    order = [j.slurm_id for j in pending_order(_jobs().values())]
    assert order == ["2", "3", "4", "4_1", "7"]


def test_small_parsers():
    assert expand_array_tasks("0-2") == (0, 1, 2)
    assert expand_array_tasks("0,2") == (0, 2)
    assert expand_array_tasks("1-9:4%2") == (1, 5, 9)
    assert expand_array_tasks("N/A") == ()
    assert [format_exit_code(x) for x in ("0", "768", "9")] == ["0:0", "3:0", "0:9"]
    # squeue rows with missing columns or non-numeric ids are dropped
    assert parse_squeue_rows("garbage\n1|2|3\n") == {}


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
