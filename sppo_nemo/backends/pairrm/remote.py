"""A PairRM worker on another node of the allocation (judge.launcher=srun): started as an srun step
by :class:`~.workers.DevicePool`, it connects back to the judge's listener, says which worker it
is, and then serves exactly as a local worker does (:func:`~.workers.serve`) over that connection.

    python -m sppo_nemo.backends.pairrm.remote HOST:PORT INDEX DEVICE CHECKPOINT BACKBONE|- DTYPE BATCH TOKENS

The listener's key comes in the environment (``SPPO_PAIRRM_AUTHKEY``, hex), never on the command line.
"""

from __future__ import annotations

import os
import sys
from multiprocessing.connection import Client

from sppo_nemo.backends.pairrm.workers import AUTHKEY_ENV, serve


def main(argv: list[str]) -> int:
    address, index, device, path, backbone, dtype, batch_size, max_batch_tokens = argv
    host, _, port = address.rpartition(":")
    conn = Client((host, int(port)), authkey=bytes.fromhex(os.environ.pop(AUTHKEY_ENV)))
    conn.send(int(index))
    serve(conn, path, None if backbone == "-" else backbone, device, dtype, int(batch_size), int(max_batch_tokens))
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
