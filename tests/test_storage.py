"""The catalog's writer lock: one writer at a time across processes (an flock) and across the
threads of one process (the web app serves requests in threads), re-entrant within a thread."""
import subprocess
import sys
import threading
import time

import pytest

from semspark.storage import home_path, writer_lock

pytestmark = pytest.mark.usefixtures("semspark_home")   # the locks under the test session's home


def _hold(name: str, seconds: float, spans: list, ready: threading.Event | None = None) -> None:
    with writer_lock(name, purpose=f"holding {seconds} s"):
        with writer_lock(name, purpose="again, in the same thread"):   # re-entrant
            spans.append(("in", time.monotonic()))
            if ready:
                ready.set()
            time.sleep(seconds)
            spans.append(("out", time.monotonic()))


def test_a_second_thread_waits_until_the_first_lets_go(caplog):
    spans: list = []
    ready = threading.Event()
    first = threading.Thread(target=_hold, args=("threads", 0.6, spans, ready))
    first.start()
    assert ready.wait(10)
    second = threading.Thread(target=_hold, args=("threads", 0.0, spans))
    second.start()
    first.join(10)
    second.join(10)
    # in, out of the first before the second's in: never two threads inside at once (before the fix
    # the second thread entered while the first held it: in, in, out, out)
    assert [what for what, _ in spans] == ["in", "out", "in", "out"]
    assert spans[2][1] >= spans[1][1]
    assert any("held by another thread of this process (holding 0.6 s)" in r.getMessage() for r in caplog.records)


def test_a_thread_that_waits_too_long_is_told_why():
    ready, done = threading.Event(), threading.Event()

    def hold():
        with writer_lock("patience", purpose="a long rewrite"):
            ready.set()
            done.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert ready.wait(10)
        with pytest.raises(TimeoutError, match=r"another thread of this process \(a long rewrite\)"):
            with writer_lock("patience", wait_s=0.3):
                pass
    finally:
        done.set()
        holder.join(10)
    with writer_lock("patience", wait_s=0.3):   # free again, and the failed wait left nothing held
        pass


def test_another_process_holding_it_makes_a_writer_wait_and_says_who():
    path = home_path("locks/processes.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time\n"
        f"f = open({str(path)!r}, 'a+'); fcntl.flock(f, fcntl.LOCK_EX); f.seek(0); f.truncate()\n"
        "f.write('pid 1 another nightly'); f.flush(); print('held', flush=True); time.sleep(30)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TimeoutError, match=r"another semspark process \(pid 1 another nightly\)"):
            with writer_lock("processes", wait_s=0.5):
                pass
    finally:
        holder.kill()
        holder.wait()
    with writer_lock("processes", wait_s=5):   # the kernel let go of the killed process's lock
        assert path.read_text().startswith("pid ")
