"""Flags every command on a trained run shares: the run, the split it reads, the checkpoint and the device."""

from __future__ import annotations

import argparse

SPLITS = ("train", "val", "test")
CHECKPOINT_HELP = "last (the end of training) or best (the best validation ELBO)"


def run_flags(parser: argparse.ArgumentParser, split: bool = True) -> None:
    parser.add_argument("run")
    if split:
        parser.add_argument("--split", default="test", choices=SPLITS)
    parser.add_argument("--checkpoint", default="last", help=CHECKPOINT_HELP)
    parser.add_argument("--device", default="auto")
