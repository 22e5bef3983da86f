"""From a recipe to jobs: the records a run directory keeps of its jobs (``records``), which stages a
submission sends and how (``plan``), NeMo-Run as the job layer (``nemorun``, the one module that
imports nemo_run), a job that requeues itself (``requeue``), Slurm's queue (``squeue``) and the
``--submit`` / ``--status`` / ``--cancel`` commands (``submit``). The ``launch:`` section's checks
live with the other recipe checks (``loading.launch_checks``)."""
