"""Put on PYTHONPATH by the megatron tests only: CPU patches for megatron-core in torchrun workers."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import megatron_cpu  # noqa: E402  (cpu_patches/megatron_cpu.py)

megatron_cpu.install_import_hook()
