"""generation.backend=vllm: independent vLLM engines in worker processes of their own.

- ``check``: the recipe's ``generation.vllm`` keys against each other and the policy's shape (pure);
- ``controller``: :class:`VLLMGenerator`, the Generator the stages use; formats prompts as token
  ids, writes the job folder, runs and watches one worker per engine, merges their chunk logs in
  prompt order, decodes the samples; never imports vllm;
- ``job``: the job folder's format (standard library only);
- ``worker`` and ``__main__``: one engine over its chunks, in the interpreter of
  ``generation.vllm.python``: the one place vllm is imported.
"""
