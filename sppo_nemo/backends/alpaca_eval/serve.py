"""python -m sppo_nemo.backends.alpaca_eval.serve PARENT_PID VLLM_ARGS...: vLLM's OpenAI server for
a local judge, bound to sppo-run's life.

vLLM's server does not watch its parent, so a kill -9 of sppo-run would leave it holding its GPUs
(or CPU cores) and its port. This wrapper, run in vLLM's interpreter, first takes the parent watch of
our own workers (process/children.py: the kernel's parent-death signal and a watchdog, ending the
whole process group, engine core included), then runs the server's module as ``__main__``. It
imports nothing of vLLM itself and nothing of the package beyond the standard-library ``children``.
"""

import runpy
import sys

if __name__ == "__main__":
    from sppo_nemo.process.children import die_with_parent

    die_with_parent(int(sys.argv[1]))
    sys.argv = ["vllm.entrypoints.openai.api_server", *sys.argv[2:]]
    runpy.run_module("vllm.entrypoints.openai.api_server", run_name="__main__", alter_sys=True)
