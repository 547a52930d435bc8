"""Progress output: plain lines (no carriage returns) when the stream is not a terminal."""
import io

from data.progress import PlainProgress, progress_bar


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_file_gets_plain_lines_without_carriage_returns():
    stream = io.StringIO()
    bar = progress_bar(200, "ExtractFlow[SYN] shard 1/2", stream=stream)
    for _ in range(200):
        bar.update(1)
    bar.write("ExtractFlow[SYN] shard 1/2: skipped walk/a.avi: broken")
    bar.close()
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    # 10%, 20%, ..., 100%: ten progress lines, plus the skipped item.
    assert [l for l in lines if "skipped" not in l][0] == "ExtractFlow[SYN] shard 1/2: 20/200 items (10%), 0 s"
    assert len(lines) == 11
    assert lines[-2].startswith("ExtractFlow[SYN] shard 1/2: 200/200 items (100%)")


def test_a_slow_loop_prints_a_line_every_half_minute_between_percent_steps():
    clock, stream = FakeClock(), io.StringIO()
    bar = PlainProgress(1000, "Train", stream=stream, clock=clock)
    for seconds in (10, 20, 31, 45, 62):  # 1 item each: 0.5% of the work, far below the 10% step
        clock.now = seconds
        bar.update(1)
    assert stream.getvalue().splitlines() == ["Train: 3/1000 items (0%), 31 s", "Train: 5/1000 items (0%), 62 s"]
    clock.now = 70
    bar.update(1)
    bar.close()  # the end is reported once
    bar.close()
    assert stream.getvalue().splitlines()[2:] == ["Train: 6/1000 items (1%), 70 s"]


def test_a_terminal_gets_the_tqdm_bar():
    stream = FakeTerminal()
    bar = progress_bar(4, "Decode", stream=stream)
    bar.update(4)
    bar.close()
    assert "\r" in stream.getvalue() and "4/4" in stream.getvalue()
