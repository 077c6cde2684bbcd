"""The project's commands (`python src/soup.py ...`, `python scripts/export_soup.py ...`) as separate processes
that skip the ~7 s of importing torch, timm, open_clip, transformers, Hydra and W&B: each is forked from a
process that imported those once (multiprocessing's forkserver, one per test worker), then runs the script as
`python <script> <args>` would: its own process, working directory, environment, argv, sys.path, absolute
`__file__`, stdout and stderr (decoded as subprocess does), fresh numpy and torch seeds, the platform's
multiprocessing start method, its own exit hooks, and its exit status (an uncaught exception goes through
`sys.excepthook` and exits 1, KeyboardInterrupt ends by SIGINT, `sys.exit("error: ...")` prints the message
and exits 1). The package itself (`soups`) is imported afresh by every command, so a file a test adds or edits
is seen. `run` has `subprocess.run`'s signature for what the tests use and returns its `CompletedProcess`.

A command goes to `subprocess.run` unchanged unless it is `python <existing file.py> ...` in an existing folder
with the environment the server was started with in every variable read at import (PYTHON*, HF_*, TORCH*,
OMP_*, TMPDIR, ...). Still unlike a fresh interpreter: the hash seed is the server's, W&B's import-time media
folder is shared by the commands of one worker, non-daemon threads are not waited for, only the script's own
globals are torn down at exit (not every module's), and tracebacks show one frame of this module.
tests/test_commands.py holds the two side by side; tests/test_cli.py keeps fresh interpreters, as a user
starts them."""
from __future__ import annotations

import atexit
import builtins
import gc
import importlib.machinery
import json
import locale
import logging
import multiprocessing
import multiprocessing.util
import os
import signal
import subprocess
import sys
import tempfile
import types
import weakref
from pathlib import Path

# third-party modules only: what a command imports that takes seconds (measured with python -X importtime)
PRELOAD = ["torch", "torchvision", "timm", "open_clip", "transformers", "peft", "hydra", "omegaconf", "numpy",
           "scipy.stats", "safetensors.torch", "PIL.Image", "wandb", "huggingface_hub", "submitit"]
# environment variables that the interpreter or a preloaded module reads at start or import: a command whose
# environment differs from the server's in one of these starts a fresh interpreter instead
READ_AT_IMPORT = ("PYTHON", "HF_", "HUGGINGFACE", "TRANSFORMERS_", "TORCH", "OMP_", "MKL_", "OPENBLAS_", "CUDA_",
                  "XDG_", "TMPDIR", "TEMP", "TMP", "LANG", "LC_", "HOME")
_SERVER: dict = {}


def _at_import(env) -> dict:
    return {k: v for k, v in env.items() if k.startswith(READ_AT_IMPORT)}


def _server():
    """The forkserver's context, the environment it imported under, and a fresh interpreter's sys.path[1:]."""
    if not _SERVER:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        fresh = subprocess.run([sys.executable, "-c", "import json, sys; print(json.dumps(sys.path[1:]))"],
                               capture_output=True, text=True, check=True, cwd=tempfile.gettempdir())
        _SERVER.update(context=context, env=_at_import(os.environ), path=json.loads(fresh.stdout))
    return _SERVER


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


def _run_as_main(path: str) -> None:
    """Execute the file as the interpreter does its script: a new `__main__` module (runpy would also set
    sys.argv[0] to the joined path, where python keeps it as typed)."""
    main = types.ModuleType("__main__")
    main.__dict__.update(__file__=path, __cached__=None, __package__=None, __spec__=None, __builtins__=builtins,
                         __loader__=importlib.machinery.SourceFileLoader("__main__", path))
    sys.modules["__main__"] = main
    with open(path, "rb") as source:
        code = compile(source.read(), path, "exec", dont_inherit=True)
    exec(code, main.__dict__)


def _as_python(script: str, args: list[str], cwd: str, env: dict, path: list[str], out: str, err: str) -> None:
    """The child: become `python script *args` with this cwd and env, its output going to out and err."""
    import numpy
    import torch

    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, name in ((1, out), (2, err)):
        with open(name, "wb") as f:
            os.dup2(f.fileno(), fd)
    sys.stdin = open(os.devnull)
    gc.freeze()  # the server's heap is not the command's: no collection walks it (0.3 s each)
    _own_exit_hooks()
    multiprocessing.set_start_method(None, force=True)  # the platform's default, not the server's
    numpy.random.seed()  # fresh entropy, as a new interpreter has (Python's `random` reseeds at fork itself)
    torch.seed()
    sys.argv = [script, *args]
    sys.path[:] = [str(Path(script).resolve().parent), *path]
    code, interrupted = 0, False
    try:
        _run_as_main(os.path.join(cwd, script))  # as python makes `__file__`: cwd joined, not normalized
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            code = exit_.code or 0
        else:
            print(exit_.code, file=sys.stderr)
            code = 1
    except BaseException as error:
        sys.excepthook(type(error), error, error.__traceback__)
        code, interrupted = 1, isinstance(error, KeyboardInterrupt)
    atexit._run_exitfuncs()
    main = sys.modules.pop("__main__", None)
    if main is not None:  # as finalization clears the script's globals: what they held
        vars(main).clear()
    gc.collect()  # is finalized (e.g. an unclosed file's buffer is written)
    sys.stdout.flush()
    sys.stderr.flush()
    if interrupted:  # as the interpreter ends on an uncaught KeyboardInterrupt: by SIGINT
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code)


def _forkable(command, cwd, env) -> bool:
    return (isinstance(command, (list, tuple)) and len(command) >= 2 and command[0] == sys.executable
            and str(command[1]).endswith(".py") and Path(cwd or ".").is_dir()
            and Path(cwd or ".", command[1]).is_file()
            and _at_import(os.environ if env is None else env) == _server()["env"])


def _decode(data: bytes) -> str:
    """As subprocess decodes with text=True: the locale's encoding, strict, universal newlines."""
    return data.decode(locale.getpreferredencoding(False)).replace("\r\n", "\n").replace("\r", "\n")


def run(command, *, cwd=None, env=None, capture_output=False, text=False, timeout=None, check=False,
        **kwargs) -> subprocess.CompletedProcess:
    """`subprocess.run(command, ...)`, a script of `sys.executable` forked from the preloaded process."""
    if kwargs or not _forkable(command, cwd, env):
        return subprocess.run(command, cwd=cwd, env=env, capture_output=capture_output, text=text,
                              timeout=timeout, check=check, **kwargs)
    script, args = str(command[1]), [str(a) for a in command[2:]]
    server = _server()
    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp, "stdout"), Path(tmp, "stderr")
        out.touch()
        err.touch()
        child = server["context"].Process(target=_as_python, args=(
            script, args, str(cwd or os.getcwd()), dict(os.environ if env is None else env), server["path"],
            str(out), str(err)))
        child.start()
        child.join(timeout)
        timed_out = child.exitcode is None
        if timed_out:
            child.kill()
            child.join()
        stdout, stderr = out.read_bytes(), err.read_bytes()
    if text:
        stdout, stderr = _decode(stdout), _decode(stderr)
    if timed_out:
        raise subprocess.TimeoutExpired(command, timeout, output=stdout, stderr=stderr)
    if not capture_output:  # as subprocess.run: the output goes where the caller's goes
        sys.stdout.write(stdout if text else _decode(stdout))
        sys.stderr.write(stderr if text else _decode(stderr))
        stdout = stderr = None
    done = subprocess.CompletedProcess(command, child.exitcode, stdout, stderr)
    if check:
        done.check_returncode()
    return done


ROOT = Path(__file__).resolve().parents[1]  # not conftest's: the forkserver imports this module, never conftest


def project(script: str, *args, tmp: Path | None = None, env: dict | None = None, cwd: Path = ROOT,
            timeout: float | None = None) -> subprocess.CompletedProcess:
    """`python <script> <args>` as a user types it in the repository root (`script` relative to it: "src/soup.py",
    "scripts/export_soup.py"), stdout and stderr captured as text; the exit status is the caller's to check.
    `tmp`: the run writes its logs and caches under it (paths.log_dir=<tmp>/logs paths.cache_dir=<tmp>/cache,
    after `args`), never into the checkout. `env`: variables set on top of this process's environment (which
    conftest makes offline: HF_HUB_OFFLINE=1, WANDB_MODE=offline)."""
    paths = [f"paths.log_dir={tmp}/logs", f"paths.cache_dir={tmp}/cache"] if tmp is not None else []
    return run([sys.executable, script, *map(str, args), *paths], cwd=cwd, env={**os.environ, **(env or {})},
               capture_output=True, text=True, timeout=timeout)


def succeeded(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """`proc` if it exited 0; otherwise fail the test with the end of its stderr."""
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc
