"""What lies on disk and its one reader and writer each: prompt data (``data``, ``alpaca``), model
checkpoints by name (``hub``), the run directory (``artifacts``), chunk logs (``chunklog``), the
training rows (``rows``) and step checkpoints (``step_checkpoints``). Kept free of heavy imports:
the vLLM worker imports ``chunklog`` under vLLM's own interpreter."""
