"""The `dsflow` entry point: every failure of a job ends in its log file with the reason, and a non-zero exit."""

from dsflow.cli import main


def test_an_unexpected_error_is_in_the_log_with_its_traceback(tmp_path, capsys):
    log = tmp_path / "job.log"
    # `dsflow page` on a Markdown file that does not exist: an OSError, not a UserError (no message prepared for it)
    args = ["page", "--markdown", str(tmp_path / "nope.md"), "--out", str(tmp_path / "a.html")]
    assert main(["--log", str(log), *args]) == 1
    text = log.read_text()
    assert "dsflow page failed with an unexpected error" in text
    assert "Traceback (most recent call last):" in text and "FileNotFoundError" in text and "nope.md" in text
    assert not (tmp_path / "a.html").exists()


def test_a_user_error_is_one_line_in_the_log(tmp_path):
    log = tmp_path / "job.log"
    assert main(["--log", str(log), "page", "--out", str(tmp_path / "a.html")]) == 2
    lines = log.read_text().splitlines()
    assert lines[0].endswith(f"I dsflow --log {log} page --out {tmp_path / 'a.html'}")  # the command, then the reason
    assert len(lines) == 2 and " E give either --markdown FILE or --validation" in lines[1]


def test_a_job_shows_progress_warnings_and_errors_on_the_terminal_and_everything_in_its_log(tmp_path, capfd):
    """With --log (a workflow job), what the process prints to stderr goes to the log; the terminal gets the job's
    progress lines and problems, prefixed with the command."""
    import sys

    log = tmp_path / "job.log"
    (tmp_path / "t.csv").write_text("wav_filename,wav_filesize,transcript\nnope.wav,1,hello\n")
    code = main(["--log", str(log), "alphabet", "--csv", str(tmp_path / "t.csv")])
    print("a library's chatter on stderr", file=sys.stderr)  # after the job: the terminal again
    out, err = capfd.readouterr()
    assert code == 0 and "'h'\t1" in out  # the command's own output (stdout) is untouched
    assert "a library's chatter on stderr" in err
    assert "I dsflow --log" in log.read_text() and "dsflow --log" not in err  # info lines: the log only


def test_only_the_commands_module_is_imported(tmp_path):
    """`dsflow features` does not import the training code (nor TensorFlow): each job runs the code it tracks."""
    import subprocess
    import sys

    probe = ("import sys\nfrom dsflow.cli import main\nmain(['config-doc'])\n"
             "assert 'dsflow.train' not in sys.modules and 'dsflow.features' not in sys.modules, sorted(sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_inside_a_job_stderr_goes_to_its_log(tmp_path, capfd):
    """TensorFlow's C++ start-up lines and Python warnings are written to file descriptor 2: during a job they end in
    its log, and the terminal gets the job's warnings only."""
    import os
    import sys

    from dsflow import log as dslog

    log = tmp_path / "job.log"
    with dslog.job_output(str(log), "train"):
        os.write(2, b"I0000 port.cc:153] oneDNN custom operations are on\n")  # what TensorFlow's C++ does
        print("a Python warning", file=sys.stderr)
        dslog.log.info("an info line")
        dslog.log.warning("a warning")
    _, err = capfd.readouterr()
    text = log.read_text()
    assert "oneDNN custom operations" in text and "a Python warning" in text and "an info line" in text
    assert "oneDNN" not in err and "a Python warning" not in err and "an info line" not in err
    assert "W train: a warning" in err


def test_log_level_and_show_progressbar(tmp_path, monkeypatch):
    """DeepSpeech's log_level (0 debug, 1 info, 2 warnings, 3 errors) and show_progressbar reach a job through the
    workflow's environment (rules/common.smk): what the job's log gets."""
    from dsflow import log as dslog

    def job(name, level, progress):
        monkeypatch.setenv("DSFLOW_LOG_LEVEL", level)
        monkeypatch.setenv("DSFLOW_PROGRESS", progress)
        log = tmp_path / f"{name}.log"
        with dslog.job_output(str(log), name):
            dslog.log.debug("a debug line")
            dslog.log.info("an info line")
            dslog.log.warning("a warning")
            with dslog.Progress("counting", 3, "steps", interval=0) as progress:
                for _ in range(3):
                    progress.update()
        return log.read_text()

    default = job("default", "1", "1")
    assert "a debug line" not in default and "an info line" in default and "a warning" in default
    assert default.count("counting: ") == 4 and "counting: 3/3 steps (100%)" in default  # 3 periodic + the last
    assert "a debug line" in job("debug", "0", "1")
    warnings = job("warnings", "2", "1")
    assert "an info line" not in warnings and "counting" not in warnings and "a warning" in warnings
    assert "a warning" not in job("errors", "3", "1")
    quiet = job("quiet", "1", "0")  # show_progressbar false: the summary line at the end only
    assert "an info line" in quiet and quiet.count("counting: ") == 1 and "3/3 steps (100%)" in quiet
