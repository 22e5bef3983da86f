"""python -m sppo_nemo.backends.vllm JOB_DIR ENGINE PARENT_PID: one vLLM engine worker (worker.py).

The guard matters: on CPU vLLM starts its engine core in a child process by spawning, which
re-imports the main module."""

import sys

if __name__ == "__main__":
    from sppo_nemo.backends.vllm.worker import main

    sys.exit(main(sys.argv[1:]))
