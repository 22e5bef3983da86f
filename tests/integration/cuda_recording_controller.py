"""``python tests/integration/cuda_recording_controller.py RECORD sppo-run-args...``: sppo-run in a
process whose ``torch.cuda`` reports one GPU and records (then refuses) every use of it.

The process rule (sppo_nemo/run/stage_process.py) says the controller never computes on a GPU: told
that CUDA is there, it must send every device stage to a worker process, which starts afresh
(spawn), sees the real torch of this CPU machine and computes on the CPU. Every allocation on a
CUDA device goes through ``torch.cuda._lazy_init``, so recording it (and the calls a GPU engine
makes directly) catches any tensor, model or cache the controller would have put on the device.
The calls made are written to RECORD as a JSON list when sppo-run ends.
"""

if __name__ == "__main__":  # a spawned worker imports this file as __mp_main__: it must stay unpatched
    import json
    import sys
    from pathlib import Path

    import torch

    calls: list[str] = []

    def refuse(name):
        def call(*args, **kwargs):
            calls.append(name)
            raise RuntimeError(f"the controller used CUDA: torch.cuda.{name}")
        return call

    torch.cuda.is_available = lambda: True
    torch.cuda.device_count = lambda: 1
    for name in ("_lazy_init", "set_device", "current_device", "synchronize", "empty_cache", "mem_get_info",
                 "memory_allocated", "max_memory_allocated", "reset_peak_memory_stats", "get_device_properties",
                 "manual_seed", "manual_seed_all"):
        setattr(torch.cuda, name, refuse(name))

    from sppo_nemo.cli import main

    record, args = Path(sys.argv[1]), sys.argv[2:]
    try:
        code = main(args)
    finally:
        record.write_text(json.dumps(calls))
    sys.exit(code)
