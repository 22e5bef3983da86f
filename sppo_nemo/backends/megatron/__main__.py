"""``python -m sppo_nemo.backends.megatron JOB_DIR``: one worker process of a megatron job."""

import sys

from sppo_nemo.backends.megatron.worker import main

sys.exit(main())
