"""`launcher=slurm`: hydra-submitit-launcher's SlurmLauncher (the same settings: a sweep as one job array,
a job hit by its time limit or preempted requeued up to max_num_timeout times) with two changes
(soups.jobs.launchers): it follows its jobs with squeue where the cluster keeps no accounting, and a job
stopped for good (timed out once more than max_num_timeout allows) or ended without a result (cancelled,
killed, a user error, one that can never start) ends the sweep with one plain line instead of a traceback
(the job's full log stays under <sweep>/.submitit/). Hydra finds launchers only under the hydra_plugins package, hence this module."""
import logging

from hydra_plugins.hydra_submitit_launcher import submitit_launcher

log = logging.getLogger(__name__)


class SoupsSlurmLauncher(submitit_launcher.SlurmLauncher):
    def launch(self, job_overrides, initial_job_idx):
        from soups.jobs.launchers import (STOPPED_FOR_GOOD, ended_line, followed,  # lazy: plugin discovery
                                          stopped_jobs, stopped_line)               # stays fast
        from submitit.core.utils import UncompletedJobError

        sweep, most = str(self.config.hydra.sweep.dir), self.params.get("max_num_timeout")
        try:
            with followed():
                results = super().launch(job_overrides, initial_job_idx)
        except UncompletedJobError as err:  # a job without a result: killed, cancelled, exited, never started
            if STOPPED_FOR_GOOD in str(err):  # stopped outside the task (e.g. while loading its config)
                raise SystemExit(stopped_line("of this sweep", "its run dir", sweep, most)) from None
            raise SystemExit(ended_line(err, sweep)) from None
        stopped = stopped_jobs(results, sweep, most)
        if stopped:
            raise SystemExit("\n".join(stopped))
        return results
