"""``python -m tests.delayed_run SECONDS script.py args…``: the script as ``python script.py args…``
runs it, but every encoder forward pass first sleeps SECONDS.

Test-only: a run of a tiny model then lasts long enough for a kill -9 to land mid-run, without the
compute of a big model (the patch embedding runs once per forward pass, however the encoder is called).
"""
import runpy
import sys
import time

import torch


def _sleep_before_patch_embedding(module, _inputs):
    if type(module).__name__.startswith("PatchEmbed"):
        time.sleep(DELAY_S)


if __name__ == "__main__":
    DELAY_S = float(sys.argv[1])
    torch.nn.modules.module.register_module_forward_pre_hook(_sleep_before_patch_embedding)
    sys.argv = sys.argv[2:]
    runpy.run_path(sys.argv[0], run_name="__main__")
