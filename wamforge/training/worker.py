"""One rank of a training job: `python -m wamforge.training.worker CONFIG [--resume] [--overwrite] [--stage NAME]`."""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from wamforge.training.distributed import CollectiveTimeout
from wamforge.training.preemption import PREEMPTED_EXIT, Preempted
from wamforge.training.trainer import RUN_ERRORS, main_from_file


def main() -> None:
    parser = argparse.ArgumentParser(prog="wamforge-worker")
    parser.add_argument("config", type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--stage", action="append", default=None, help="train only this stage (repeatable)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    import torch

    if not torch.cuda.is_available():  # whatever launched us: DeepSpeed's CPU accelerator, over gloo
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        main_from_file(args.config, resume=args.resume, overwrite=args.overwrite, only=args.stage)
    except Preempted as stopped:
        if os.environ.get("RANK", "0") == "0":
            print(f"stopped: {stopped}", file=sys.stderr)
        sys.exit(PREEMPTED_EXIT)
    except CollectiveTimeout as err:  # every rank that timed out says what it saw
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except RUN_ERRORS as err:  # one sentence, no traceback
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
