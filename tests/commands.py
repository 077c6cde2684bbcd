"""The project's commands (`python src/soup.py ...`, `python scripts/export_soup.py ...`) as separate processes
that skip the ~7 s of importing torch, timm, open_clip, transformers, Hydra and W&B: each is forked from a
process that imported those once (multiprocessing's forkserver, one per test worker), then runs the script as
`python <script> <args>` would: its own process, working directory, environment, argv, sys.path[0], stdout
and stderr, exit status (an uncaught exception prints its traceback and exits 1; `sys.exit("error: ...")`
prints the message and exits 1). The package itself (`soups`) is imported afresh by every command, so a file
a test adds or edits is seen. `run` has `subprocess.run`'s signature for what the tests use and returns its
`CompletedProcess`; anything but `python <existing file.py> ...` goes to `subprocess.run` unchanged. Unlike
a fresh interpreter, the child does not wait for non-daemon threads the command left running, and
multiprocessing names it a child of the server (no library the commands use asks). tests/test_commands.py
compares the two; tests/test_cli.py keeps fresh interpreters, as a user starts them."""
from __future__ import annotations

import atexit
import logging
import multiprocessing
import multiprocessing.util
import os
import runpy
import subprocess
import sys
import tempfile
import traceback
import weakref
from pathlib import Path

# third-party modules only: what a command imports that takes seconds (measured with python -X importtime)
PRELOAD = ["torch", "torchvision", "timm", "open_clip", "transformers", "peft", "hydra", "omegaconf", "numpy",
           "scipy.stats", "safetensors.torch", "PIL.Image", "wandb", "huggingface_hub", "submitit"]
_CONTEXT = None


def _context():
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(PRELOAD)
    return _CONTEXT


def _own_exit_hooks() -> None:
    """A forked child inherits the server's exit hooks, and some remove what every child shares: W&B, which
    timm imports, makes temp folders at import and registers their removal. Those stay the server's; the
    child gets the per-process hooks a fresh interpreter has (logging's flush, the reaping of its own
    multiprocessing children, the finalizers of objects it makes) and whatever the command registers."""
    atexit._clear()
    for finalizer in list(weakref.finalize._registry):
        finalizer.atexit = False
    atexit.register(logging.shutdown)
    atexit.register(multiprocessing.util._exit_function)
    atexit.register(weakref.finalize._exitfunc)


def _as_python(script: str, args: list[str], cwd: str, env: dict, out: str, err: str) -> None:
    """The child: become `python script *args` with this cwd and env, its output going to out and err."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        with open(path, "wb") as f:
            os.dup2(f.fileno(), fd)
    sys.stdin = open(os.devnull)
    _own_exit_hooks()
    sys.argv = [script, *args]
    sys.path.insert(0, str(Path(script).resolve().parent))
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            code = exit_.code or 0
        else:
            print(exit_.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _is_script(command, cwd) -> bool:
    return (isinstance(command, (list, tuple)) and len(command) >= 2 and command[0] == sys.executable
            and str(command[1]).endswith(".py") and Path(cwd or ".", command[1]).is_file())


def run(command, *, cwd=None, env=None, capture_output=False, text=False, timeout=None, check=False,
        **kwargs) -> subprocess.CompletedProcess:
    """`subprocess.run(command, ...)`, a script of `sys.executable` forked from the preloaded process."""
    if kwargs or not _is_script(command, cwd):
        return subprocess.run(command, cwd=cwd, env=env, capture_output=capture_output, text=text,
                              timeout=timeout, check=check, **kwargs)
    script, args = str(command[1]), [str(a) for a in command[2:]]
    with tempfile.TemporaryDirectory() as tmp:
        out, err = f"{tmp}/stdout", f"{tmp}/stderr"
        Path(out).touch()
        Path(err).touch()
        child = _context().Process(target=_as_python, args=(script, args, str(cwd or os.getcwd()),
                                                            dict(os.environ if env is None else env), out, err))
        child.start()
        child.join(timeout)
        if child.exitcode is None:
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired(command, timeout)
        stdout, stderr = Path(out).read_bytes(), Path(err).read_bytes()
    if text:
        stdout, stderr = stdout.decode(errors="replace"), stderr.decode(errors="replace")
    if not capture_output:  # as subprocess.run: the output goes where the caller's goes
        sys.stdout.write(stdout if text else stdout.decode(errors="replace"))
        sys.stderr.write(stderr if text else stderr.decode(errors="replace"))
        stdout = stderr = None
    done = subprocess.CompletedProcess(command, child.exitcode, stdout, stderr)
    if check:
        done.check_returncode()
    return done
