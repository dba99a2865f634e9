"""How commands report: one line per error (NanokernError, ValueError, OSError) with exit code
1, warnings on stderr, and the --json report files."""

from __future__ import annotations

import json

import click

from nanokern.errors import NanokernError


def warn_line(msg: str) -> None:
    click.echo(f"warning: {msg}", err=True)


def write_json(path, obj) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(obj, f, indent=2, default=str)
            f.write("\n")


class Fail(click.ClickException):
    """One clear line on stderr, exit code 1."""

    exit_code = 1

    def show(self, file=None):
        from nanokern.execute.distributed import world

        if world()[0] == 0:
            click.echo(f"error: {self.message}", err=True)


def run_guarded(ctx_json, debug, fn):
    """Run fn(); turn NanokernError/ValueError/OSError into one line, also in the --json report."""
    try:
        return fn()
    except (NanokernError, ValueError, OSError) as e:
        if debug:
            import traceback

            traceback.print_exc()
        msg = str(e) if not isinstance(e, OSError) or isinstance(e, NanokernError) else os_error_line(e)
        write_json(ctx_json, {"ok": False, "error": msg})
        raise Fail(msg) from None


def os_error_line(e: OSError) -> str:
    if e.filename is None:
        return e.strerror or str(e)
    return f"{e.filename}: {e.strerror}"
