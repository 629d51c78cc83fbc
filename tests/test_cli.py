"""The `dsflow` entry point: every failure of a job ends in its log file with the reason, and a non-zero exit."""

from dsflow.cli import main


def test_an_unexpected_error_is_in_the_log_with_its_traceback(tmp_path, capsys):
    log = tmp_path / "job.log"
    # `dsflow page` on a Markdown file that does not exist: an OSError, not a UserError (no message prepared for it)
    assert main(["--log", str(log), "page", "--markdown", str(tmp_path / "nope.md"), "--out", str(tmp_path / "a.html")]) == 1
    text = log.read_text()
    assert "dsflow page failed with an unexpected error" in text
    assert "Traceback (most recent call last):" in text and "FileNotFoundError" in text and "nope.md" in text
    assert not (tmp_path / "a.html").exists()


def test_a_user_error_is_one_line_in_the_log(tmp_path):
    log = tmp_path / "job.log"
    assert main(["--log", str(log), "page", "--out", str(tmp_path / "a.html")]) == 2
    lines = log.read_text().splitlines()
    assert len(lines) == 1 and lines[0].endswith("give either --markdown FILE or --validation SUMMARY.json ...")


def test_only_the_commands_module_is_imported(tmp_path):
    """`dsflow features` does not import the training code (nor TensorFlow): each job runs the code it tracks."""
    import subprocess
    import sys

    probe = ("import sys\nfrom dsflow.cli import main\nmain(['config-doc'])\n"
             "assert 'dsflow.train' not in sys.modules and 'dsflow.features' not in sys.modules, sorted(sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
