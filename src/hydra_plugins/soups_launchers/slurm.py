"""`launcher=slurm`: hydra-submitit-launcher's SlurmLauncher (the same settings: a sweep as one job array,
a job hit by its time limit or preempted requeued up to max_num_timeout times) with two changes
(soups.jobs.launchers): it follows its jobs with squeue where the cluster keeps no accounting, and a job
stopped for good (timed out once more than max_num_timeout allows) ends the sweep with one plain line per
job instead of a traceback. Hydra finds launchers only under the hydra_plugins package, hence this module."""
import logging

from hydra_plugins.hydra_submitit_launcher import submitit_launcher

log = logging.getLogger(__name__)


class SoupsSlurmLauncher(submitit_launcher.SlurmLauncher):
    def launch(self, job_overrides, initial_job_idx):
        from soups.jobs.launchers import STOPPED_FOR_GOOD, followed, stopped_jobs, stopped_line  # lazy: plugin
        from submitit.core.utils import UncompletedJobError                                  # discovery stays fast

        sweep, most = str(self.config.hydra.sweep.dir), self.params.get("max_num_timeout")
        try:
            with followed():
                results = super().launch(job_overrides, initial_job_idx)
        except UncompletedJobError as err:  # stopped outside the task (e.g. while loading its config)
            if STOPPED_FOR_GOOD not in str(err):
                raise
            raise SystemExit(stopped_line("of this sweep", "its run dir", sweep, most)) from None
        stopped = stopped_jobs(results, sweep, most)
        if stopped:
            raise SystemExit("\n".join(stopped))
        return results
