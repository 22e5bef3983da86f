"""A run: the plan run stage by stage (``runner``), each stage in its own process where the machine
has CUDA (``stage_process``), engines refused before work starts (``preflight``), the report
(``report``) and optional tracking (``tracking``)."""
