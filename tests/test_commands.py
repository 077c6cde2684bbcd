"""tests/commands.py runs a script as `python <script>` would, from a process that imported torch and the rest
once: the same exit status, output, argv, working directory, environment and sys.path[0] as a fresh
interpreter, the command's own exit hooks run, and one command's exit never removes what the next needs."""
import os
import subprocess
import sys

import pytest

import commands

PROBE = """import atexit, json, os, sys
atexit.register(lambda: open(os.environ["PROBE_EXIT_FILE"], "w").write("ran"))
print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "path0": sys.path[0], "env": os.environ.get("PROBE"),
                  "name": __name__}))
mode = sys.argv[1]
if mode == "plain":
    sys.exit("error: a plain message")
if mode == "raise":
    raise ValueError("boom")
if mode == "code":
    sys.exit(3)
"""


@pytest.mark.parametrize("mode", ["ok", "plain", "raise", "code"])
def test_a_forked_command_gives_what_a_fresh_interpreter_gives(tmp_path, mode):
    script = tmp_path / "scripts" / "probe.py"
    script.parent.mkdir()
    script.write_text(PROBE)
    (tmp_path / "work").mkdir()
    answers = []
    for runner in (subprocess.run, commands.run):
        exit_file = tmp_path / f"exit_{runner.__module__}"
        env = {**os.environ, "PROBE": "value", "PROBE_EXIT_FILE": str(exit_file)}
        done = runner([sys.executable, str(script), mode, "a=1"], cwd=tmp_path / "work", env=env,
                      capture_output=True, text=True, timeout=120)
        assert exit_file.read_text() == "ran"  # the command's own exit hooks
        last_err = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
        answers.append((done.returncode, done.stdout, last_err, "Traceback" in done.stderr))
    assert answers[0] == answers[1]
    assert answers[0][0] == {"ok": 0, "plain": 1, "raise": 1, "code": 3}[mode]


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
    script = tmp_path / "sleep.py"
    script.write_text("import time\ntime.sleep(60)\n")
    with pytest.raises(subprocess.TimeoutExpired):
        commands.run([sys.executable, str(script)], capture_output=True, timeout=1)
    with pytest.raises(subprocess.CalledProcessError):
        commands.run([sys.executable, str(tmp_path / "missing.py")], capture_output=True, check=True)
