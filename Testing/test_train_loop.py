"""PASTALib.train.loop / progress: hook order, exact resume, stop handling, rank reductions, PROGRESS lines.

A toy loop (linear regression, its own torch.Generator for the batches) stands in for the four
trainings, so these run in well under a second each."""

from __future__ import annotations

import math
import os
import signal

import pytest
import torch

from PASTALib.train.common import DistContext, StopFlag
from PASTALib.train.loop import TrainingLoop, load_training_state
from PASTALib.progress import Progress, progress_line


class ToyLoop(TrainingLoop):
    """y = x·w regression; batches from a generator whose state travels in the checkpoint."""

    name = "toy"

    def __init__(self, path, *, iterations=6, checkpoint_every=2, stop=None, fail_at=None, on_end=None, **kw):
        super().__init__(iterations=iterations, checkpoint_every=checkpoint_every, stop=stop, **kw)
        torch.manual_seed(0)
        self.checkpoint_path = path
        self.model = torch.nn.Linear(4, 1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        self.gen = torch.Generator().manual_seed(1)
        self.calls: list[str] = []
        self.losses: dict[int, float] = {}
        self.fail_at, self.on_end = fail_at, on_end

    def load_checkpoint(self):
        self.calls.append("load_checkpoint")
        if not self.checkpoint_path.is_file():
            return None
        state = load_training_state(self.checkpoint_path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.gen.set_state(state["gen"])
        return int(state["iteration"])

    def save_checkpoint(self):
        self.calls.append(f"save_checkpoint@{self.iteration}")
        torch.save({"iteration": self.iteration, "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(), "gen": self.gen.get_state()}, self.checkpoint_path)

    def on_train_start(self):
        self.calls.append("on_train_start")

    def train_step(self, iteration):
        self.calls.append(f"train_step@{iteration}")
        if iteration == self.fail_at:
            raise RuntimeError("boom")
        x = torch.randn(8, 4, generator=self.gen)
        loss = torch.nn.functional.mse_loss(self.model(x), x.sum(1, keepdim=True))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss.detach())}

    def validation_step(self, iteration, row):
        self.calls.append(f"validation_step@{iteration}")

    def log_iteration(self, iteration, row):
        self.calls.append(f"log_iteration@{iteration}")
        self.losses[iteration] = row["loss"]

    def on_iteration_end(self, iteration, row):
        self.calls.append(f"on_iteration_end@{iteration}")
        if self.on_end is not None:
            self.on_end(self, iteration)

    def on_train_end(self, *, failed):
        self.calls.append(f"on_train_end(failed={failed})")


def test_hooks_are_called_in_order(tmp_path):
    loop = ToyLoop(tmp_path / "ck.pt", iterations=3, checkpoint_every=2)
    assert loop.run() == 3 and not loop.stopped and loop.resumed_from is None
    step = ["train_step@{0}", "validation_step@{1}", "log_iteration@{1}"]
    expected = ["load_checkpoint", "on_train_start"]
    for i in range(3):
        expected += [s.format(i, i + 1) for s in step]
        if i + 1 in (2, 3):  # every 2 iterations and at the end
            expected.append(f"save_checkpoint@{i + 1}")
        expected.append(f"on_iteration_end@{i + 1}")
    assert loop.calls == expected + ["on_train_end(failed=False)"]


def test_stop_then_resume_equals_an_uninterrupted_run(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "part").mkdir()
    full = ToyLoop(tmp_path / "full" / "ck.pt", iterations=6, checkpoint_every=4)
    full.run()
    stop = StopFlag()

    def stop_at_3(loop, iteration):
        if iteration == 3:
            stop.stop = True

    part = ToyLoop(tmp_path / "part" / "ck.pt", iterations=6, checkpoint_every=4, stop=stop, on_end=stop_at_3)
    assert part.run() == 3 and part.stopped
    assert part.calls[-2:] == ["save_checkpoint@3", "on_train_end(failed=False)"]  # the stop writes iteration 3
    resumed = ToyLoop(tmp_path / "part" / "ck.pt", iterations=6, checkpoint_every=4)
    assert resumed.run() == 6 and resumed.resumed_from == 3 and "on_train_start" in resumed.calls
    assert sorted(resumed.losses) == [4, 5, 6]
    assert {**part.losses, **resumed.losses} == full.losses  # identical losses, not just close
    assert (tmp_path / "part" / "ck.pt").read_bytes() == (tmp_path / "full" / "ck.pt").read_bytes()  # byte-identical checkpoint
    again = ToyLoop(tmp_path / "part" / "ck.pt", iterations=6)  # a finished run resumes at the end: no step
    assert again.run() == 6 and not any(c.startswith("train_step") for c in again.calls)


def test_sigterm_and_callable_stop(tmp_path):
    flag = StopFlag()
    before = signal.getsignal(signal.SIGTERM)
    with flag.install_signal_handlers():
        loop = ToyLoop(tmp_path / "a.pt", iterations=6, checkpoint_every=100, stop=flag,
                       on_end=lambda lp, it: os.kill(os.getpid(), signal.SIGTERM) if it == 2 else None)
        assert loop.run() == 2 and loop.stopped
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored
    assert loop.calls.count("save_checkpoint@2") == 1 and torch.load(tmp_path / "a.pt")["iteration"] == 2
    seen = []
    loop = ToyLoop(tmp_path / "b.pt", iterations=6, checkpoint_every=2, stop=lambda: len(seen) >= 4,
                   on_end=lambda lp, it: seen.append(it))
    assert loop.run() == 4 and loop.stopped
    assert loop.calls.count("save_checkpoint@4") == 1  # already written at 4: not written twice


def test_failure_keeps_the_last_checkpoint_and_closes(tmp_path):
    loop = ToyLoop(tmp_path / "c.pt", iterations=6, checkpoint_every=2, fail_at=3)
    with pytest.raises(RuntimeError, match="boom"):
        loop.run()
    assert loop.calls[-1] == "on_train_end(failed=True)" and "save_checkpoint@3" not in loop.calls
    assert torch.load(tmp_path / "c.pt")["iteration"] == 2


class TwoRanks(DistContext):
    """A 2-process context whose all-reduce adds a fixed 'other rank' vector (no process group)."""

    def __init__(self, other):
        super().__init__(rank=0, local_rank=0, world_size=2)
        self.other = torch.tensor(other, dtype=torch.float64)

    def all_reduce_sum(self, values):
        return values + self.other

    def agree_on_resume(self, iteration, path):
        return iteration


def test_reduce_metrics_means_over_ranks_and_agrees_on_stop(tmp_path):
    single = ToyLoop(tmp_path / "s.pt").reduce_metrics({"loss": 1.0, "dice": math.nan}, nan_aware=("dice",))
    assert single["loss"] == 1.0 and math.isnan(single["dice"])  # one process: unchanged, nothing sent
    # other rank: loss 3 (count 1), dice NaN (count 0), stop requested
    loop = ToyLoop(tmp_path / "r.pt", dist=TwoRanks([3.0, 1.0, 0.0, 0.0, 1.0]))
    out = loop.reduce_metrics({"loss": 1.0, "dice": 0.5}, nan_aware=("dice",))
    assert out == {"loss": 2.0, "dice": 0.5}
    assert loop.stop_requested() and not loop.stop_flag()  # the other rank's stop reaches this one
    nan = ToyLoop(tmp_path / "n.pt", dist=TwoRanks([math.nan, 1.0, 0.0, 0.0, 0.0]))
    out = nan.reduce_metrics({"loss": 1.0, "dice": math.nan}, nan_aware=("dice",))
    assert math.isnan(out["loss"]) and math.isnan(out["dice"]) and not nan.stop_requested()


def test_progress_lines_are_throttled_monotone_and_end_at_one(capsys):
    progress = Progress(10, desc="t", lines=True, bar=False, every=4)
    progress.line(0.0, "start")
    for _ in range(10):
        progress.advance(1, "step")
    progress.update(10, "again")  # at the end: printed again (the total is always reported)
    progress.close()
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [float(parts[1]) for parts in lines] == [0.0, 0.4, 0.8, 1.0, 1.0]
    jumping = Progress(100, desc="t", lines=True, bar=False, initial=30, every=25)
    jumping.update(60, "resumed fold", force=True)
    jumping.advance(10, "no line (50..70 crosses no multiple of 25)")
    jumping.advance(10, "crosses 75")
    assert [line.split()[1] for line in capsys.readouterr().out.splitlines()] == ["0.6000", "0.8000"]


def test_progress_line_is_the_protocol_the_slicer_modules_parse(capsys):
    """The exact bytes on stdout (fraction with 4 decimals, or an n/total count) and nothing on stderr;
    PASTASlicerLib.jobs reads them back."""
    from PASTASlicerLib.jobs import parse_progress

    progress_line(0.25, "case 1/4 a: done, 2 lesion(s)")
    progress_line("3/10")
    progress_line(1, "done")
    captured = capsys.readouterr()
    assert captured.out == "PROGRESS 0.2500 case 1/4 a: done, 2 lesion(s)\nPROGRESS 3/10\nPROGRESS 1.0000 done\n"
    assert captured.err == ""
    assert [parse_progress(line) for line in captured.out.splitlines()] == [
        (0.25, "case 1/4 a: done, 2 lesion(s)"), (0.3, ""), (1.0, "done")]


def test_progress_span_and_unknown_total(capsys):
    """The CLI adapters' cases: a transfer mapped into part of the command's range (span), a download
    whose length is unknown (a counter, no fraction lines), and segment's forced stage notices."""
    from PASTALib.cli.data import ByteProgress
    from PASTALib.cli.segment import _SegmentProgress

    transfer = ByteProgress("f", lines=True, bar=False, span=(0.0, 0.95))
    for done in (0, 500, 1000):
        transfer(done, 1000)
    transfer.line(1.0, "installed")
    unknown = ByteProgress("g", lines=True, bar=False)
    unknown(10, None)
    unknown(20, None)
    transfer.close(), unknown.close()
    fractions = [line.split()[1] for line in capsys.readouterr().out.splitlines()]
    assert fractions == ["0.4750", "0.9500", "1.0000"]  # 0 is the start position: no line until it moves

    seg = _SegmentProgress(lines=True, bar=False)
    seg(0.0, "loading model")
    seg(0.1012, "window 1/10")
    seg(0.1014, "window 1/10, 9 left")  # no further multiple of 0.002: throttled
    seg(0.05, "writing outputs")  # a stage notice: printed, and the position never goes back
    seg.close()
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["PROGRESS 0.0000 loading model", "PROGRESS 0.1010 window 1/10", "PROGRESS 0.1010 writing outputs"]
