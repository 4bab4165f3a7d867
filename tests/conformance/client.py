"""The tuf-conformance client-under-test, on fleetup's own trust layer.

`theupdateframework/tuf-conformance` checks a TUF client against the specification
through a small command-line protocol (its ``CLIENT-CLI.md``). This entrypoint speaks
that protocol with exactly what a device uses: :class:`TufReleaseSource` (its Updater
set-up and trust-on-first-use rule, its error mapping) over :class:`HttpxFetcher`
(timeouts, retries, resumable downloads). It is not a test module: pytest never
collects it; the suite runs it as a program (see README.md beside it).

    client.py --metadata-dir DIR init TRUSTED_ROOT
    client.py --metadata-dir DIR --metadata-url URL refresh
    client.py --metadata-dir DIR --metadata-url URL --target-name PATH [...]
              --target-base-url URL --target-dir DIR download

Exit code 0 on success, 1 on any failure (one line on stderr saying why).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path
from urllib.parse import quote, urljoin

from fleetup.agent._trust import RepoEndpoints, TufReleaseSource
from fleetup.errors import FleetupError

# Not "*.json": the suite reads every *.json in the metadata dir as a trusted role.
SHIPPED_ROOT = "shipped-root"
PARTIAL_DIR = "partial"


def init(metadata_dir: Path, trusted_root: Path) -> None:
    """Keep the given root as the device's shipped root of trust; no request is made.

    The first refresh bootstraps from it, as a device's first run does.
    """
    metadata_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(trusted_root, metadata_dir / SHIPPED_ROOT)


def open_source(metadata_dir: Path, metadata_url: str,
                targets_url: str | None = None) -> TufReleaseSource:
    endpoints = RepoEndpoints(metadata_url, targets_url or urljoin(metadata_url, "../targets/"))
    return TufReleaseSource(metadata_dir, metadata_dir / PARTIAL_DIR, endpoints,
                            metadata_dir / SHIPPED_ROOT)


def refresh(metadata_dir: Path, metadata_url: str) -> None:
    with open_source(metadata_dir, metadata_url) as source:
        source.refresh()


def download(metadata_dir: Path, metadata_url: str, target_names: list[str],
             targets_url: str, target_dir: Path) -> None:
    """Refresh, then download each target in order with the same Updater."""
    with open_source(metadata_dir, metadata_url, targets_url) as source:
        source.refresh()
        for name in target_names:
            source.download(name, target_dir / quote(name, ""))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="tuf-conformance client on fleetup")
    parser.add_argument("--metadata-dir", type=Path, required=True)
    parser.add_argument("--metadata-url")
    parser.add_argument("--target-name", action="append", default=[])
    parser.add_argument("--target-dir", type=Path)
    parser.add_argument("--target-base-url")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("init").add_argument("trusted_root", type=Path)
    commands.add_parser("refresh")
    commands.add_parser("download")
    args = parser.parse_args(argv)
    if args.command != "init" and not args.metadata_url:
        parser.error(f"{args.command} needs --metadata-url")
    if args.command == "download" and not (args.target_dir and args.target_base_url
                                           and args.target_name):
        parser.error("download needs --target-name, --target-dir and --target-base-url")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else logging.WARNING)
    try:
        if args.command == "init":
            init(args.metadata_dir, args.trusted_root)
        elif args.command == "refresh":
            refresh(args.metadata_dir, args.metadata_url)
        else:
            download(args.metadata_dir, args.metadata_url, args.target_name,
                     args.target_base_url, args.target_dir)
    except (FleetupError, OSError) as e:
        print(f"fleetup conformance client: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
