"""tests/commands.py runs a script as `python <script>` would, from a process that imported torch and the rest
once: the same exit status, output, argv, working directory, environment, sys.path, `__file__` and start
method as a fresh interpreter, the command's own exit hooks and finalizers run, fresh random seeds, and one
command's exit never removes what the next needs; a command whose import-time environment differs from the
server's gets a fresh interpreter."""
import json
import os
import subprocess
import sys

import pytest

import commands

PROBE = """import atexit, json, multiprocessing, os, sys
atexit.register(lambda: open(os.environ["PROBE_EXIT_FILE"], "w").write("ran"))
print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "path": sys.path, "file": __file__,
                  "env": os.environ.get("PROBE"), "name": __name__,
                  "start_method": multiprocessing.get_start_method()}))
mode = sys.argv[1]
if mode == "plain":
    sys.exit("error: a plain message")
if mode == "raise":
    raise ValueError("boom")
if mode == "code":
    sys.exit(3)
if mode == "interrupt":
    raise KeyboardInterrupt
if mode == "unclosed":  # a buffered file the script never closes: flushed when the interpreter finalizes it
    kept = open(os.environ["PROBE_EXIT_FILE"] + ".unclosed", "w")
    kept.write("data")
if mode == "newlines":
    sys.stderr.write("a\\rb\\r\\nc\\n")
"""


@pytest.mark.parametrize("mode", ["ok", "plain", "raise", "code", "interrupt", "unclosed", "newlines"])
def test_a_forked_command_gives_what_a_fresh_interpreter_gives(tmp_path, mode):
    script = tmp_path / "scripts" / "probe.py"
    script.parent.mkdir()
    script.write_text(PROBE)
    (tmp_path / "work").mkdir()
    answers = []
    for runner in (subprocess.run, commands.run):
        exit_file = tmp_path / f"exit_{runner.__module__}"
        env = {**os.environ, "PROBE": "value", "PROBE_EXIT_FILE": str(exit_file)}
        done = runner([sys.executable, "../scripts/probe.py", mode, "a=1"], cwd=tmp_path / "work", env=env,
                      capture_output=True, text=True, timeout=120)
        assert exit_file.read_text() == "ran"  # the command's own exit hooks
        unclosed = exit_file.with_name(exit_file.name + ".unclosed")
        last_err = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
        answers.append((done.returncode, done.stdout, last_err, "Traceback" in done.stderr,
                        unclosed.read_text() if unclosed.exists() else None,
                        done.stderr if mode == "newlines" else None))
    assert answers[0] == answers[1]
    assert answers[0][0] == {"plain": 1, "raise": 1, "code": 3, "interrupt": -2}.get(mode, 0)
    seen = json.loads(answers[0][1])
    assert seen["file"] == f"{tmp_path}/work/../scripts/probe.py" and seen["path"][0] == str(script.parent)


def test_forked_commands_draw_fresh_seeds(tmp_path):
    script = tmp_path / "draw.py"
    script.write_text("import numpy, torch\nprint(numpy.random.randint(2**31), torch.initial_seed())\n")
    draws = [commands.run([sys.executable, str(script)], capture_output=True, text=True, check=True).stdout
             for _ in range(2)]
    assert draws[0] != draws[1]


def test_an_environment_read_at_import_gets_a_fresh_interpreter(tmp_path):
    """huggingface_hub reads HF_HUB_OFFLINE at import: a command run with another value than the server's must
    see its own, so it is not forked."""
    script = tmp_path / "offline.py"
    script.write_text("from huggingface_hub import constants\nprint(constants.HF_HUB_OFFLINE)\n")
    for value, shown in (("0", "False"), ("1", "True")):
        env = {**os.environ, "HF_HUB_OFFLINE": value}
        done = commands.run([sys.executable, str(script)], env=env, capture_output=True, text=True, check=True)
        assert done.stdout.strip() == shown


def test_a_command_leaves_the_next_one_the_folders_wandb_made_at_import(tmp_path):
    """W&B makes its media folder when timm imports it, in the server, and registers its removal at exit; a
    command that ran that hook would leave the next command's W&B tables nowhere to be written."""
    script = tmp_path / "media.py"
    script.write_text("import os\nfrom wandb.sdk.data_types._private import MEDIA_TMP\n"
                      "print(os.path.isdir(MEDIA_TMP.name))\n")
    for _ in range(2):
        done = commands.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr[-2000:]


def test_other_commands_and_a_timeout_behave_as_subprocess_run(tmp_path):
    assert commands.run(["true"]).returncode == 0  # not a script of this Python: subprocess.run itself
    (tmp_path / "noop.py").write_text("")
    commands.run([sys.executable, str(tmp_path / "noop.py")], check=True)  # the server is up before the clock runs
    script = tmp_path / "sleep.py"
    script.write_text("import time\nprint('started', flush=True)\ntime.sleep(60)\n")
    with pytest.raises(subprocess.TimeoutExpired) as timed_out:
        commands.run([sys.executable, str(script)], capture_output=True, text=True, timeout=3)
    assert timed_out.value.stdout == "started\n"  # what it wrote before the timeout, as subprocess keeps it
    with pytest.raises(subprocess.CalledProcessError):
        commands.run([sys.executable, str(tmp_path / "missing.py")], capture_output=True, check=True)
    with pytest.raises(FileNotFoundError):  # a working directory that does not exist
        commands.run([sys.executable, str(script)], cwd=tmp_path / "nowhere", capture_output=True)
