"""Hydra launchers `launcher=local_parallel` and `launcher=slurm`: hydra-submitit-launcher's, plus two things.

- Inside a SLURM job, SIGUSR1 (submitit's timeout/preemption signal) and SIGTERM (scancel, `scontrol requeue`,
  preemption) go through bar.checkpoint: a running training loop checkpoints at the end of its step, then submitit
  requeues the job (SIGUSR1) or the process exits (SIGTERM, SLURM requeues or cancels it). The requeued job runs the
  same point again, which resumes its MLflow run and checkpoint (bar.pipeline.execute).
- A job that dies outside the task function (killed, out of memory, node failure) becomes a failed point instead of
  an exception that aborts the whole sweep; submission time travels to the jobs (BAR_SUBMITTED_AT) so the launch
  overhead is measured.

Hydra instantiates launchers only from the `hydra_plugins` package, hence this module; it imports no torch."""

import logging
import os
import time

from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher import submitit_launcher as _hsl

log = logging.getLogger("bar")


class _LauncherMixin:
    """Signals into the training loop's checkpoint; per-job failures instead of an aborted sweep."""

    def __call__(self, *args, **kwargs):
        if os.environ.get("SLURM_JOB_ID"):
            from bar.checkpoint import install_stop_handlers

            install_stop_handlers()
        return super().__call__(*args, **kwargs)

    def launch(self, job_overrides, initial_job_idx):
        from pathlib import Path

        import submitit
        from hydra.core.singleton import Singleton
        from hydra.core.utils import filter_overrides
        from omegaconf import OmegaConf

        params = dict(self.params)
        init = {"folder": params.pop("submitit_folder")}
        if "max_num_timeout" in params:
            init[f"{self._EXECUTOR}_max_num_timeout"] = params.pop("max_num_timeout")
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
        base = set(OmegaConf.structured(_hsl.BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"{self._EXECUTOR}_{k}": v for k, v in params.items()})
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        job_params = []
        for i, overrides in enumerate(job_overrides):
            idx = initial_job_idx + i
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        # the jobs inherit this environment (sbatch --export=ALL, local subprocesses): launch overhead is measured
        os.environ["BAR_SUBMITTED_AT"] = f"{time.time():.3f}"
        jobs = executor.map_array(self, *zip(*job_params))
        log.info("submitted %d job(s) to %s: %s", len(jobs), self._EXECUTOR, ", ".join(j.job_id for j in jobs))
        results = []
        for job, overrides in zip(jobs, job_overrides):
            try:
                results.append(job.results()[0])   # rank 0's return value
            except Exception as err:  # died outside the task function: killed, out of memory, node failure
                first = str(err).strip().splitlines()
                log.error("job %s (%s) failed: %s", job.job_id, " ".join(overrides),
                          first[-1] if first else type(err).__name__)
                ret = JobReturn(overrides=list(overrides))
                ret.status = JobStatus.FAILED
                ret._return_value = err
                results.append(ret)
        return results


class SlurmLauncher(_LauncherMixin, _hsl.SlurmLauncher):
    """`launcher=slurm`: hydra-submitit-launcher's SLURM launcher with checkpoint-on-signal and per-job failures."""


class LocalLauncher(_LauncherMixin, _hsl.LocalLauncher):
    """`launcher=local_parallel`: submitit's local executor (all jobs of a batch at once)."""

