"""Progress reads well in a log file (plain lines, an early estimate, ETA) and stays a bar on a terminal."""
import io

from runtime.progress import Progress, counted, format_duration, progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_log_file_gets_plain_lines_with_an_estimate_eta_and_total():
    log = io.StringIO()
    with Progress(10, "training offseg-t", unit="it", interval=0.0, stream=log) as reporter:
        for step in range(10):
            reporter.update(1, loss=f"{1 / (step + 1):.3f}")
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    estimate = next(i for i, line in enumerate(lines) if "expected duration" in line)
    assert estimate == 2  # after the third step (interval 0: one status line per earlier step)
    assert any("ETA" in line and "loss" in line and "/10 it (" in line for line in lines[estimate + 1:-1])
    assert lines[-1].startswith("training offseg-t: 10/10 it in ") and "loss 0.100" in lines[-1]


def test_log_lines_are_rate_limited():
    log = io.StringIO()
    for _ in progress(range(200), "evaluating", unit="image", interval=3600, stream=log):
        pass
    assert len(log.getvalue().splitlines()) == 2  # the estimate and the summary, nothing per step
    assert log.getvalue().splitlines()[-1].startswith("evaluating: 200/200 images in ")
    one = io.StringIO()
    list(progress(range(1), "evaluating", unit="image", stream=one))
    assert one.getvalue().startswith("evaluating: 1/1 image in ")


def test_terminal_gets_a_bar_and_disabled_prints_nothing():
    terminal, quiet = Terminal(), io.StringIO()
    list(progress(range(5), "calibrating", stream=terminal))
    list(progress(range(5), "calibrating", stream=quiet, enabled=False))
    assert "\r" in terminal.getvalue() and "calibrating" in terminal.getvalue()
    assert quiet.getvalue() == ""


def test_durations_read_like_a_person_writes_them():
    assert [format_duration(s) for s in (42, 390, 3720)] == ["42 s", "6 min 30 s", "1 h 02 min"]


def test_counts_read_like_a_person_writes_them():
    assert [counted(1, "class"), counted(5, "class"), counted(0, "image"), counted(1, "frame")] == [
        "1 class", "5 classes", "0 images", "1 frame"]
