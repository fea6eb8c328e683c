"""`vitserve serve PATH [PATH ...]`: the HTTP (and gRPC) server. Its flags are the server's Settings fields, made
once from them here: the flag's name, type, choices, help and default all come from the field (server/settings.py)."""

from __future__ import annotations

import argparse
import logging
import types
import typing
from pathlib import Path

from vitserve.errors import VitServeError


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from vitserve.server.run import serve
    from vitserve.server.settings import Settings

    flags = {name for name in Settings.model_fields if name not in Settings.NOT_FLAGS}
    given = {name: getattr(args, name) for name in flags if getattr(args, name) is not None}
    try:
        settings = Settings(artifact=[Path(p) for p in args.artifact], **given)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise VitServeError(f"invalid settings: {problems}") from e
    logging.getLogger("vitserve").setLevel(logging.INFO)
    return serve(settings)


def _without_server(args: argparse.Namespace) -> int:
    raise VitServeError("`vitserve serve` needs the server's packages: pip install 'vitserve[serve]' (or "
                        "'vitserve[serve-gpu]')")


def add_setting(parser: argparse.ArgumentParser, name: str, field) -> None:
    """One flag for a Settings field: --max-batch-size for max_batch_size, its type, choices and help from the
    field. Unset flags stay None, so that VITSERVE_* environment variables and then the field's default apply."""
    kind = field.annotation
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:  # int | None
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    default = "" if field.default is None else f" (default {field.default:g})" if isinstance(field.default, float) \
        else f" (default {field.default})"
    flag = "--" + name.replace("_", "-")
    if kind is bool:
        parser.add_argument(flag, dest=name, action="store_const", const=True, default=None, help=field.description)
    elif typing.get_origin(kind) is typing.Literal:
        parser.add_argument(flag, dest=name, choices=typing.get_args(kind), default=None,
                            help=f"{field.description}{default}")
    else:
        parser.add_argument(flag, dest=name, type=kind, default=None, help=f"{field.description}{default}")


class SettingsParser(argparse.ArgumentParser):
    """serve's parser. Its flags come from the server's Settings, added the first time it parses or prints help,
    so that the other commands (and `vitserve --help`) never import pydantic."""

    _complete = False

    def _add_settings(self) -> None:
        if self._complete:
            return
        self._complete = True
        try:
            from vitserve.server.settings import Settings
        except ImportError:  # an export-only install: the command says what to install when it is run
            self.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
            self.set_defaults(func=_without_server)
            return
        for name, field in Settings.model_fields.items():
            if name not in Settings.NOT_FLAGS:
                add_setting(self, name, field)

    def parse_known_args(self, args=None, namespace=None):
        self._add_settings()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._add_settings()
        return super().format_help()


def add(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve artifacts over HTTP (POST /classify, KServe V2, a try-it page) and optionally gRPC (KServe V2)",
        description="Serve artifacts, or repositories of them (one folder per model, numbered version folders): "
        "POST /classify, the KServe V2 protocol under /v2 with its model repository extension, /healthz, /readyz, "
        "/metrics, /docs, the try-it page at /; with --grpc-port, the KServe V2 protocol over gRPC too. Unset flags "
        "come from VITSERVE_* environment variables; VITSERVE_API_KEY, if set, is required on inference and "
        "repository routes.",
    )
    p.__class__ = SettingsParser  # argparse makes every subparser with one class; this one completes itself
    p.add_argument("artifact", nargs="+", metavar="PATH", help="an artifact directory written by `vitserve export`, "
                   "or a model repository: one folder per model, each an artifact or numbered version folders "
                   "(NAME/1/, NAME/2/) of artifacts")
    p.set_defaults(func=run)
