"""Publish the schedule zoo to the Hub, each schedule with its card.

    python -m mlrsnet_hf.zoo.publish --namespace ORG [--name mlrsnet_hf/digits-cnn-600 ...] [--private] [--dry-run]

Needs a token (``hf auth login``, ``HF_TOKEN`` or ``--token``) and the network. Each zoo schedule
``mlrsnet_hf/<task>-<steps>`` goes to ``ORG/mlrsnet-<task>-<steps>``: it is loaded through the usual checks and
uploaded with ``push_to_hub``, so the repo holds the files ``save_pretrained`` writes and a card whose snippet loads
the Hub repo. With no network the upload stops at the first schedule with a
:class:`~mlrsnet_hf.hub.HubUnreachableError` naming the repo.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from ..hub import ScheduleFileError, load_any_schedule
from ..version import __version__
from . import ZOO_PREFIX, zoo_names


def hub_repo_id(name: str, namespace: str) -> str:
    """The Hub repo of zoo schedule ``name`` under ``namespace``: ``mlrsnet_hf/digits-cnn-600`` ->
    ``ORG/mlrsnet-digits-cnn-600``."""
    return f"{namespace}/mlrsnet-{name.removeprefix(ZOO_PREFIX)}"


def publish_zoo(
    namespace: str,
    names: Sequence[str] | None = None,
    *,
    token: str | None = None,
    private: bool = False,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Upload the zoo schedules ``names`` (default: all) to ``namespace``; zoo name -> the commit (``dry_run``: the
    repo id it would go to, nothing uploaded)."""
    names = list(names or zoo_names())
    unknown = sorted(set(names) - set(zoo_names()))
    if unknown:
        raise ValueError(f"Not in the zoo: {unknown}. The zoo: {', '.join(zoo_names())}.")
    done: dict[str, Any] = {}
    for name in names:
        schedule = load_any_schedule(name)
        repo_id = hub_repo_id(name, namespace)
        if dry_run:
            done[name] = repo_id
            continue
        done[name] = schedule.push_to_hub(
            repo_id,
            token=token,
            private=private,
            commit_message=f"{name} from the mlrsnet_hf {__version__} schedule zoo",
            model_card_kwargs={"repo_id": repo_id},
        )
    return done


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlrsnet_hf.zoo.publish", description=__doc__.split("\n\n")[0])
    parser.add_argument("--namespace", required=True, help="the Hub user or organisation to publish under")
    parser.add_argument("--name", action="append", help=f"a zoo schedule (repeatable; default all: {zoo_names()})")
    parser.add_argument("--token", help="a Hub token with write access (default: the logged-in one)")
    parser.add_argument("--private", action="store_true", help="create the repos private")
    parser.add_argument("--dry-run", action="store_true", help="print where each schedule would go; upload nothing")
    args = parser.parse_args(argv)
    try:
        done = publish_zoo(args.namespace, args.name, token=args.token, private=args.private, dry_run=args.dry_run)
    except (ScheduleFileError, ValueError) as e:
        print(f"publish: error: {e}", file=sys.stderr)
        return 1
    for name, result in done.items():
        print(f"{name} -> {result if args.dry_run else getattr(result, 'commit_url', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
