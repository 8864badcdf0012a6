"""``python -m tests.delayed_run SECONDS CLASS script.py args…``: the script as ``python script.py
args…`` runs it, but every forward pass of a module whose class name starts with CLASS first
sleeps SECONDS.

Test-only: a run of a tiny model then lasts long enough for a kill -9 to land mid-run, without the
compute of a big model. CLASS ``PatchEmbed`` slows each encoder forward pass (the patch embedding
runs once per pass, however the encoder is called); ``AttentiveClassifier`` each probe step.
"""
import runpy
import sys
import time

import torch


def _sleep_before(module, _inputs):
    if type(module).__name__.startswith(CLASS):
        time.sleep(DELAY_S)


if __name__ == "__main__":
    DELAY_S, CLASS = float(sys.argv[1]), sys.argv[2]
    torch.nn.modules.module.register_module_forward_pre_hook(_sleep_before)
    sys.argv = sys.argv[3:]
    runpy.run_path(sys.argv[0], run_name="__main__")
