"""``pasta weights``: what a checkpoint can do (segment which classes, report attributes, embed) and why."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("weights", help="inspect PASTA checkpoints").add_subparsers(dest="command", metavar="COMMAND")
    info = group.add_parser("info", help="what a checkpoint can do: segment (which classes), attributes, embed, and why",
                            description="Reads the file (metadata block, seg_outputs / head shapes, classes.json beside it) "
                                        "and says what it can be used for. PASTA_final.pth is an encoder + attribute head: "
                                        "embeddings, report attributes and few-shot fine-tuning; segmentation needs a "
                                        "stage-1 or fine-tuned model.")
    info.add_argument("checkpoint", nargs="?", help="weights file (default: PASTA_final.pth in $PASTA_WEIGHTS_DIR or ~/.pasta/weights)")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=_info)


def _info(args: argparse.Namespace) -> int:
    from PASTALib.capabilities import checkpoint_capabilities

    caps = checkpoint_capabilities(args.checkpoint)
    if args.json:
        print(json.dumps(caps.to_dict(), indent=2))
    else:
        print("\n".join(caps.lines()))
        if not caps.segment:
            from PASTALib.capabilities import FINETUNE_HINT

            print("to segment: " + FINETUNE_HINT.format(path=caps.path))
    return 0
