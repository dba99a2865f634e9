"""How commands report: one line per error (NanokernError, ValueError, OSError) with exit code
1, warnings on stderr, and the --json reports (a file, or stdout)."""

from __future__ import annotations

import contextlib
import json
import sys

import click

from nanokern.errors import NanokernError

_JSON_STDOUT: list = []  # the real stdout while a command's JSON report goes there (human lines: stderr)


def warn_line(msg: str) -> None:
    click.echo(f"warning: {msg}", err=True)


def json_option(what: str = "the report"):
    """--json (alone, or `--json -`): the JSON report on stdout, every human line on stderr;
    --json PATH: written to PATH. Pair with json_stdout() at the top of the command."""
    return click.option("--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True), is_flag=False,
                        flag_value="-", default=None, metavar="[PATH]",
                        help=f"Write {what} as JSON to PATH; --json - (or --json alone, after the arguments) prints "
                             "it on stdout and the other lines on stderr.")


@contextlib.contextmanager
def _human_to_stderr(path):
    if path != "-" or _JSON_STDOUT:
        yield
        return
    _JSON_STDOUT.append(sys.stdout)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _JSON_STDOUT.pop()


def json_stdout(path) -> None:
    """With --json to stdout: the rest of this command prints its human lines on stderr."""
    click.get_current_context().with_resource(_human_to_stderr(path))


def write_json(path, obj, default=str) -> None:
    if not path:
        return
    text = json.dumps(obj, indent=2, default=default) + "\n"
    if path == "-":
        out = _JSON_STDOUT[-1] if _JSON_STDOUT else sys.stdout
        out.write(text)
        out.flush()
        return
    with open(path, "w") as f:
        f.write(text)


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
