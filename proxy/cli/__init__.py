"""Command line: ``serve`` (the default), ``check``, ``explain``, ``report``,
``envoy-config`` and ``health``.

Every user error (a bad config key, an unknown scope, malformed YAML) is one line on stderr
naming what is wrong, and exit status 2; never a traceback. Only ``serve`` loads the server
(aiohttp, the stores, Prometheus): the other commands start fast.
"""

from __future__ import annotations

import difflib
import os
import signal
import sys
from collections.abc import Sequence

from proxy.cli.explain import explain
from proxy.cli.parser import COMMANDS, build_parser
from proxy.cli.report import report
from proxy.cli.run import check, envoy_config, health, health_url, serve
from proxy.cli.usage import UsageError
from proxy.config import ConfigError, Overrides

__all__ = ["health_url", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if not words or (words[0].startswith("-") and words[0] not in ("-h", "--help", "--version")):
        words.insert(0, "serve")  # serve is the default command: `pipedrive-scope-proxy --config F`
    elif words[0] not in (*COMMANDS, "-h", "--help", "--version"):
        close = difflib.get_close_matches(words[0], COMMANDS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        print(
            f"pipedrive-scope-proxy: unknown command {words[0]!r}{hint}; "
            f"the commands are {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    args = build_parser().parse_args(words)
    command = args.command
    try:
        if command == "check":
            return check(args.config, args.no_secrets)
        if command == "explain":
            return explain(args.config, args.method, args.path, args.scopes)
        if command == "report":
            return report(args.log, args.format, args.app_scopes, args.fail_on)
        if command == "envoy-config":
            return envoy_config(args.config, args.listen, args.authz)
        if command == "health":
            return health(args.config, args.timeout, args.ready)
        overrides = Overrides(args.mode, args.log_level)
        return serve(args.config, args.host, args.port, args.workers, overrides)
    except (ConfigError, UsageError) as error:
        print(f"pipedrive-scope-proxy: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `report ... | head`: the reader has gone, which is no error worth a traceback. What
        # is still buffered goes nowhere, and the status is the shell's for a SIGPIPE death.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
