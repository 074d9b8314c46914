"""The loggers: metrics.csv beside the TensorBoard run by default, in step order and without
duplicates after a resume; the backends chosen by `logger=`; compare reading either."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import comparable_scalars

from pgrun.compare import load_run
from pgrun.logger import CSV_FILE, CSVLogger, Logger, Loggers, read_scalars

PGRUN = str(Path(sys.executable).parent / "pgrun")
BASE = ["batch_episodes=8", "total_steps=3000", "checkpoint.every=2", "progress=false"]


def pgrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PGRUN, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def rows(run_dir: Path) -> list[tuple[int, str, float]]:
    with open(run_dir / CSV_FILE, newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["step", "tag", "value", "wall_time"]
    return [(int(s), tag, float(v)) for s, tag, v, _ in table[1:]]


def test_csv_logger_drops_what_follows_the_checkpoint_on_resume(tmp_path):
    log = CSVLogger(tmp_path)
    for step in (10, 20, 30):
        log.scalars({"a": step / 10, "b": -step}, step)
    log.close()
    with open(tmp_path / CSV_FILE, "a") as f:
        f.write("40,a,4")  # a row cut short by a crash
    log = CSVLogger(tmp_path, purge_step=21)  # resumed from the checkpoint at step 20
    log.scalars({"a": 3.5}, 30)
    log.close()
    assert rows(tmp_path) == [(10, "a", 1.0), (10, "b", -10.0), (20, "a", 2.0), (20, "b", -20.0),
                              (30, "a", 3.5)]  # fmt: skip
    series, start = read_scalars(tmp_path, ["a"])
    assert [(s, v) for s, v, _ in series["a"]] == [(10, 1.0), (20, 2.0), (30, 3.5)]
    assert start == series["a"][0][2]


def test_loggers_fan_out_and_the_interface_does_nothing_by_default(tmp_path):
    seen = []

    class Recording(Logger):  # keeps scalars; the interface's other methods do nothing
        def scalars(self, metrics, step):
            seen.append((step, metrics))

    both = Loggers([Recording(), CSVLogger(tmp_path)])
    both.log({"x": 1.0}, 5)
    both.text("t", "hello")
    both.video("v", [], 30.0, 5)  # neither keeps videos: nothing happens
    both.hparams({}, {"hparams/final_return": 2.0}, 5)
    both.close()
    assert seen == [(5, {"x": 1.0})]
    assert rows(tmp_path) == [(5, "x", 1.0), (5, "hparams/final_return", 2.0)]


def test_every_run_writes_metrics_csv_in_step_order_and_a_resume_adds_no_duplicates(tmp_path):
    done = pgrun(*BASE, "total_steps=1500", "hydra.run.dir=run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    done = pgrun("resume=run", "total_steps=3000", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    table = rows(tmp_path / "run")
    steps = [s for s, _, _ in table]
    assert steps == sorted(steps)
    keys = [(s, tag) for s, tag, _ in table]
    assert len(keys) == len(set(keys))  # nothing logged twice at one step
    # the same series as TensorBoard's, point for point (TensorBoard keeps float32)
    tb = comparable_scalars(tmp_path / "run")
    for tag, series in tb.items():
        assert [(s, float(np.float32(v))) for s, t, v in table if t == tag] == series, tag


def test_a_csv_only_run_is_compared_from_its_csv(tmp_path):
    done = pgrun(*BASE, "logger=[csv]", "hydra.run.dir=run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run_dir = tmp_path / "run"
    assert not list(run_dir.glob("events.out.tfevents.*"))
    assert "done: return" in done.stdout and "tensorboard" not in done.stdout  # nothing to view
    run = load_run(run_dir, tmp_path)
    assert run.failure is None and len(run.steps) > 3 and run.final_return is not None
    done = pgrun(*BASE, "logger=[csv,svg]", cwd=tmp_path)
    assert done.returncode == 2 and "pgrun: error: logger=" in done.stderr


def _event_file(run_dir: Path, events) -> Path:
    """An event file of `events` (step, wall time, {tag: value} or "start") written by
    TensorBoard's writer (a file_version record first) into `run_dir`: its path."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    before = set(run_dir.glob("*tfevents*"))
    writer = EventFileWriter(str(run_dir))
    for step, wall, what in events:
        if what == "start":  # what a resumed writer (purge_step) writes first
            log = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
            writer.add_event(event_pb2.Event(step=step, wall_time=wall, session_log=log))
            continue
        values = [summary_pb2.Summary.Value(tag=t, simple_value=v) for t, v in what.items()]
        summary = summary_pb2.Summary(value=values)
        writer.add_event(event_pb2.Event(step=step, wall_time=wall, summary=summary))
    writer.close()
    (path,) = set(run_dir.glob("*tfevents*")) - before
    return path


def test_read_scalars_reads_the_event_files_as_tensorboard_does(tmp_path):
    """pgrun.logger.read_events against TensorBoard's EventAccumulator: a resumed run (the
    points at and after the restart's step dropped), a file cut short, an old file without a
    file_version (out-of-order steps drop their own tags' later points), float32 values."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = ("r", "f")
    resumed = tmp_path / "resumed"
    first = [(s, 100.0 + s, {"r": s / 3, "x": 1.0}) for s in range(1, 9)]
    _event_file(resumed, first)
    # named after the first (the same second: a counter that grows)
    again = [(5, 200.0, "start"), *((s, 200.0 + s, {"r": -s / 7}) for s in range(5, 10))]
    cut = _event_file(resumed, [*again, (9, 210.0, {"f": 2.5})])
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / cut.name).write_bytes(cut.read_bytes()[:-9])  # the final return cut short
    old = tmp_path / "old"
    steps = (1, 2, 3, 4, 2, 3, 6)
    path = _event_file(old, [(s, 100.0 + i, {"r": s + 0.1, "f": -s}) for i, s in enumerate(steps)])
    data = path.read_bytes()
    (length,) = np.frombuffer(data[:8], dtype="<u8")
    path.write_bytes(data[12 + int(length) + 4 :])  # without its first record, the file_version
    for run_dir in (resumed, truncated, old):
        acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
        acc.Reload()
        expected = {
            t: sorted((e.step, e.value, e.wall_time) for e in acc.Scalars(t))
            for t in tags
            if t in acc.Tags()["scalars"]
        }
        series, start = read_scalars(run_dir, tags)
        assert series == expected and start == acc.FirstEventTimestamp(), run_dir.name
    series, _ = read_scalars(resumed, tags)
    assert [s for s, _, _ in series["r"]] == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert series["r"][5][1] == np.float32(-6 / 7)  # the resumed run's, as TensorBoard stores it
    assert "f" not in read_scalars(truncated, tags)[0]
    assert [s for s, _, _ in read_scalars(old, tags)[0]["r"]] == [1, 2, 3, 6]


def test_event_files_written_without_tensorboards_writer_are_tensorboards_format(tmp_path):
    """write_event_file's framing and checksums, string_tensor and text_summary against
    tensorboard's own (masked_crc32c, make_tensor_proto, text_pb), and the file read back by
    TensorBoard's EventAccumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as theirs
    from tensorboard.plugins.text.summary_v2 import text_pb
    from tensorboard.util import tensor_util

    from pgrun.logger import masked_crc32c, write_event_file
    from pgrun.views import string_tensor, text_summary

    rng = np.random.default_rng(0)
    for n in (0, 1, 8, 12, 200):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert masked_crc32c(data) == theirs(data)
    for text in ("", "note `x` é", b"\x00layout"):
        ref = tensor_util.make_tensor_proto(text, dtype=np.object_)
        assert string_tensor(text).SerializeToString() == ref.SerializeToString()
    assert (
        text_summary("t", "*a* é").SerializeToString() == text_pb("t", "*a* é").SerializeToString()
    )
    values = [summary_pb2.Summary.Value(tag=t, simple_value=v) for t, v in (("a", 0.5), ("b", 2.0))]
    events = [
        event_pb2.Event(wall_time=1.0, file_version="brain.Event:2"),
        event_pb2.Event(wall_time=2.0, step=7, summary=summary_pb2.Summary(value=values)),
        event_pb2.Event(wall_time=3.0, summary=text_summary("note", "hello")),
    ]
    path = write_event_file(tmp_path / "run", [e.SerializeToString() for e in events])
    assert "tfevents" in path.name
    acc = EventAccumulator(str(path.parent))
    acc.Reload()
    assert [(e.step, e.value, e.wall_time) for e in acc.Scalars("b")] == [(7, 2.0, 2.0)]
    assert acc.Tensors("note")[0].tensor_proto.string_val == [b"hello"]
    assert read_scalars(path.parent, ["a"]) == ({"a": [(7, 0.5, 2.0)]}, 1.0)
    again = write_event_file(path.parent, [events[0].SerializeToString()])
    assert again != path and path.is_file()  # a second file beside, nothing overwritten


def _events_without_wall_time(path: Path) -> list[bytes]:
    from tensorboard.compat.proto import event_pb2

    from pgrun.logger import _records

    out = []
    for record in _records(path):
        event = event_pb2.Event.FromString(record)
        event.wall_time = 0.0
        out.append(event.SerializeToString())
    return out


def test_tensorboard_logger_writes_what_torchs_summary_writer_writes(tmp_path):
    """The same calls through TensorBoardLogger's EventFile and through torch's SummaryWriter
    (scalars of several kinds, the config text, a video, a resumed run's purge records): the
    two event files hold the same records, wall times aside."""
    from torch.utils.tensorboard import SummaryWriter

    from pgrun.logger import EventFile, image_summary, torch_text_summary

    frames = [np.full((4, 6, 3), i * 40, dtype=np.uint8) for i in range(3)]
    calls = [
        ({"charts/episodic_return": 21.5, "losses/policy": np.float32(-0.25)}, 16),
        ({"stats/entropy": np.float64(0.69), "charts/SPS": 123456}, 32),
    ]
    for purge in (None, 33):
        ours_dir, theirs_dir = tmp_path / f"ours{purge}", tmp_path / f"theirs{purge}"
        ours = EventFile(ours_dir, purge)
        theirs = SummaryWriter(str(theirs_dir), purge_step=purge)
        theirs.add_text("config", "    a: 1\n    b: x", 0)
        ours.summary(torch_text_summary("config", "    a: 1\n    b: x"), 0)
        for metrics, step in calls:
            ours.scalars(metrics, step)
            for tag, v in metrics.items():
                theirs.add_scalar(tag, v, step)
        theirs.file_writer.add_summary(image_summary("eval/video", frames, 10.0), 48)
        ours.summary(image_summary("eval/video", frames, 10.0), 48)
        ours.close()
        theirs.close()
        (theirs_file,) = theirs_dir.glob("events.out.tfevents.*")
        assert _events_without_wall_time(ours.path) == _events_without_wall_time(theirs_file)


def test_hparams_records_are_tensorboards_and_a_runs_loggers_skip_its_tensorflow_stub(tmp_path):
    """The HPARAMS records carry the tags and metadata tensorboard's hparams plugin makes
    (its create_summary_metadata); building a run's loggers imports neither that module nor
    tensorboard's TensorFlow stub (a tenth of a second of every run's start)."""
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    from pgrun.views import hparams_summaries

    records = hparams_summaries({"variant": "rtg", "seed": 0}, {"seed"}, "hparams/final_return")
    tags = [metadata.EXPERIMENT_TAG, metadata.SESSION_START_INFO_TAG, metadata.SESSION_END_INFO_TAG]
    for summary, tag in zip(records, tags, strict=True):
        (value,) = summary.value
        assert value.tag == tag
        ours = value.metadata.plugin_data
        data = plugin_data_pb2.HParamsPluginData.FromString(ours.content)
        theirs = metadata.create_summary_metadata(data).plugin_data
        # compared as messages: the session start's hparams are a map, serialized in any order
        assert ours.plugin_name == theirs.plugin_name == "hparams"
        assert data == plugin_data_pb2.HParamsPluginData.FromString(theirs.content)
        assert data.version == 0
    code = (
        "import sys; from pathlib import Path; from pgrun.logger import make_loggers; "
        f"make_loggers(['tensorboard', 'csv'], Path({str(tmp_path)!r}), {{'seed': 0}}, 'seed: 0')"
        ".close(); print(sorted(m for m in sys.modules if 'tensorflow_stub' in m "
        "or m == 'tensorboard.plugins.hparams.metadata'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
