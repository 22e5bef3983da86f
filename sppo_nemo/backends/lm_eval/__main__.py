"""python -m sppo_nemo.backends.lm_eval JOB_DIR PARENT_PID: run a job's tasks (worker.py).
python -m sppo_nemo.backends.lm_eval fetch [--include-path DIR] TASK...: fill the datasets cache."""

import sys

if __name__ == "__main__":
    from sppo_nemo.backends.lm_eval.worker import main

    sys.exit(main(sys.argv[1:]))
