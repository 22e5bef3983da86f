"""From a recipe to jobs: the ``launch:`` section's checks (``check``), the records a run directory
keeps of its jobs (``records``), which stages a submission sends and how (``plan``), NeMo-Run as
the job layer (``nemorun``, the one module that imports nemo_run) and the ``--submit`` /
``--status`` / ``--cancel`` commands (``submit``)."""
