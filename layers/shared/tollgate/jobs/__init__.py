"""Scheduled jobs: each works through its items in batches, one transaction per batch together with its
cursor, so a run cut short by the Lambda's remaining time carries on where it stopped, and a second run in
the same period does nothing more."""

from tollgate.jobs.runner import BatchJob, Job, JobReport, Step, run_job, scheduled_now

__all__ = ["BatchJob", "Job", "JobReport", "Step", "run_job", "scheduled_now"]
