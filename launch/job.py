"""The callable each submitit job runs; imports submitit, so only loaded for it."""

import submitit

from launch import grid


class RunJob(submitit.helpers.Checkpointable):
  """Runs one grid run; on a timeout or preemption submitit requeues it.

  The requeued job calls `grid.run_one` again, which resumes the run from the
  orbax checkpoints in its workdir (the last finished round).
  """

  def __call__(self, job: dict) -> dict:
    return grid.run_one(job)
