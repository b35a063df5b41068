"""One rank of a training job: `python -m wamforge.training.worker CONFIG [--resume] [--overwrite]`."""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from wamforge.training.preemption import PREEMPTED_EXIT, Preempted
from wamforge.training.trainer import RunExistsError, TrainingDiverged, main_from_file


def main() -> None:
    parser = argparse.ArgumentParser(prog="wamforge-worker")
    parser.add_argument("config", type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    try:
        main_from_file(args.config, resume=args.resume, overwrite=args.overwrite)
    except Preempted as stopped:
        if os.environ.get("RANK", "0") == "0":
            print(f"stopped: {stopped}", file=sys.stderr)
        sys.exit(PREEMPTED_EXIT)
    except (RunExistsError, TrainingDiverged, FileNotFoundError, ValueError) as err:  # one sentence, no traceback
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
