"""One rank of a training job: `python -m wamforge.training.worker CONFIG [--resume] [--overwrite]`."""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from wamforge.training.trainer import main_from_file


def main() -> None:
    parser = argparse.ArgumentParser(prog="wamforge-worker")
    parser.add_argument("config", type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    main_from_file(args.config, resume=args.resume, overwrite=args.overwrite)


if __name__ == "__main__":
    main()
