"""What every ``python -m fcndata.*`` command does the same way.

* Quiet defaults, set before TensorFlow is imported and only where the user's
  environment says nothing: ``TF_CPP_MIN_LOG_LEVEL=3`` (no oneDNN / CPU-feature / absl
  start-up lines; TensorFlow is then imported with stderr silenced, as some builds log
  those lines before reading the variable), ``OPENCV_LOG_LEVEL=FATAL`` (no ``[ WARN ]`` / ``[ERROR]`` lines from OpenCV's
  decoders: a bad file is reported once, by the data checks), and
  absl's Python logger at ``error`` once TensorFlow is loaded.
* An expected failure — a bad recipe, a missing or unreadable file, a data error that
  TensorFlow raises with the file's name in its message — ends in one line on stderr,
  ``error: <message>``, and exit status 2. ``--debug`` shows the traceback instead.
* Ctrl-C (SIGINT) and SIGTERM end in one line, ``interrupted`` (plus how to continue,
  where there is a way), and exit status 130 (128 + SIGINT) or 143 (128 + SIGTERM).

Example:
  >>> one_line(ValueError("images/a.png: truncated\\n\\t [[{{node check}}]]\\n"))
  'images/a.png: truncated'
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
from typing import Callable

#: exit status of an expected failure (bad recipe, bad file); argparse uses 2 too
EXIT_ERROR = 2


def quiet_defaults() -> None:
    """Sets quiet logging defaults that the user's environment can override.

    Call it before TensorFlow (or OpenCV) is imported: the C++ loggers read their
    environment variables once, at import.
    """
    # 3, not 2: TensorFlow logs start-up and graph-version notices at ERROR level too
    # ("NodeDef mentions attribute ..."); real failures still raise Python exceptions.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # FATAL, not ERROR: OpenCV logs a corrupt TIFF at ERROR level ("[ERROR:0@..] TIFF_Error ..."),
    # which the data checks then report in one line naming the file.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "FATAL")
    if "cv2" in sys.modules and os.environ["OPENCV_LOG_LEVEL"] == "FATAL":
        # cv2 was imported before us and has read the variable already
        import cv2.utils.logging as cv2_logging

        cv2_logging.setLogLevel(cv2_logging.LOG_LEVEL_FATAL)
    if os.environ["TF_CPP_MIN_LOG_LEVEL"] in ("1", "2", "3"):
        _import_tensorflow_quietly()


def _import_tensorflow_quietly() -> None:
    """Imports TensorFlow with the process's stderr (fd 2) pointed at /dev/null.

    Some TensorFlow builds log their start-up lines ("oneDNN custom operations are on",
    "All log messages before absl::InitializeLog() ...") before they read
    ``TF_CPP_MIN_LOG_LEVEL`` (seen with tensorflow-cpu 2.21.0 on 2026-12-02), so the
    variable alone does not keep a command's output clean. A failing import still
    raises its Python exception, printed after stderr is back.
    """
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _quiet_python_loggers() -> None:
    # TensorFlow's Python warnings go to the "tensorflow" logger (and absl's); follow the
    # C++ level the environment asks for, unless the user configured that logger already.
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") in ("2", "3"):
        logger = logging.getLogger("tensorflow")
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.ERROR)
        absl = sys.modules.get("absl.logging")
        if absl is not None:
            absl.set_verbosity("error")


def command_parser(prog: str, description: str, *, recipe: bool = True, **kwargs):
    """The start of every ``python -m fcndata.*`` command, in one place: quiet logging defaults
    (before TensorFlow is imported), the parser, ``--config`` / ``--set`` when the command reads
    a recipe, and ``--debug``. The command adds its own arguments, then calls :func:`run`.
    """
    import argparse

    quiet_defaults()
    parser = argparse.ArgumentParser(prog=prog, description=description, **kwargs)
    if recipe:
        from fcndata.config import add_config_arguments

        add_config_arguments(parser)
    add_debug_argument(parser)
    return parser


def add_debug_argument(parser) -> None:
    """Adds ``--debug``: show the traceback of a failure instead of one ``error:`` line."""
    parser.add_argument("--debug", action="store_true", help="print tracebacks instead of one 'error:' line")


def expected_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that are the user's input, not a bug: reported in one line.

    TensorFlow's ``OpError`` (``InvalidArgumentError`` from the data checks, which name
    the file; ``NotFoundError``, ...) counts only if TensorFlow is already loaded.
    """
    errors: tuple[type[BaseException], ...] = (ValueError, TypeError, OSError)
    tf = sys.modules.get("tensorflow")
    if tf is not None and hasattr(tf, "errors"):
        errors += (tf.errors.OpError,)
    return errors


_NODE = re.compile(r"\s*\[\[\{\{node [^\]]*\]\]")
_FUNCTION = re.compile(r"\{\{function_node [^}]*\}\}\s*")
_ASSERTION = re.compile(r"assertion failed:\s*\[(.*)\]", re.I | re.S)
_USER_FUNCTION = re.compile(r"^Error in user-defined function passed to .*? transformation with iterator: [^:]*:\s*")


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line: TensorFlow's op, node and function names dropped.

    Example:
      >>> one_line(ValueError("{{function_node __wrapped__X}} Error in user-defined function passed to "
      ...     "Map:3 transformation with iterator: Root::Map: assertion failed: [image a.png is truncated] [Op:X] name:"))
      'image a.png is truncated'
    """
    tf = sys.modules.get("tensorflow")
    if tf is not None and hasattr(tf, "errors") and isinstance(error, tf.errors.OpError):
        text = error.message
    elif isinstance(error, OSError) and error.filename is not None and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    else:
        text = str(error)
    text = _FUNCTION.sub("", _NODE.sub("", text))
    # autograph re-raises an error from traced code as "in user code:", the traced frames,
    # then "    ValueError: <message>": keep the message.
    raised = re.search(r"^\s*in user code:.*?\n\s+\w+(?:Error|Exception): (.*)\Z", text, flags=re.S)
    if raised:
        text = raised.group(1)
    found = _ASSERTION.search(text)
    if found:  # tf.debugging.assert_* wraps our message in [ ... ], wherever TF puts it
        return " ".join(re.split(r"\]\s*\[", found.group(1))[0].split())
    text = re.sub(r"^\s*Graph execution error:\s*(Detected at node.*?\n\n)?", "", text, flags=re.S)
    text = text.split("\n\n")[0]  # TF appends the op's stack trace after a blank line
    text = re.sub(r"\s*\[Op:[^\]]*\]( name:.*)?$", "", text.strip(), flags=re.S)
    text = _USER_FUNCTION.sub("", text.strip())
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return text or type(error).__name__


class Interrupted(KeyboardInterrupt):
    """Raised by the SIGINT / SIGTERM handler, so ``finally`` blocks run as for Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_RECEIVED: list[int] = []


def _on_signal(signum, frame):
    _RECEIVED.append(signum)
    raise Interrupted(signum)


def check_interrupted() -> None:
    """Raises :class:`Interrupted` again if SIGINT or SIGTERM arrived.

    Why: the handler's exception can land inside a C extension (TensorFlow's nest
    flattening) or a finaliser that swallows it (seen for Ctrl-C under load: the run then
    trained on to its end); long loops call this at safe points (the trainer after every
    batch) so the signal still ends the run.
    """
    if _RECEIVED:
        raise Interrupted(_RECEIVED[-1])


def run(body: Callable[[], int], *, debug: bool = False, on_interrupt: Callable[[], str] | None = None) -> int:
    """Runs a command's ``body`` and turns its failures into one line and an exit status.

    Args:
      body: the command; returns its exit status.
      debug: re-raise instead (``--debug``): the full traceback.
      on_interrupt: returns the line printed on Ctrl-C / SIGTERM (default ``interrupted``).

    Returns:
      ``body()``'s status; 2 after an expected error; 130 after Ctrl-C, 143 after SIGTERM.
    """
    previous = {}
    _RECEIVED.clear()
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, _on_signal)
    except ValueError:
        pass  # not the main thread (a test calling main() from a thread): leave signals alone
    try:
        _quiet_python_loggers()
        return body()
    except KeyboardInterrupt as e:
        if debug:
            raise
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        print(f"\n{on_interrupt() if on_interrupt else 'interrupted'}", file=sys.stderr, flush=True)
        return 128 + int(signum)
    except expected_errors() as e:
        if debug:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
