"""Loggers: where a run's numbers go. One small interface, any number of backends at once
(`logger=[tensorboard,csv]`, the default):

    scalars(metrics, step)        namespaced tags (charts/, losses/, stats/, eval/) at x = step
    text(tag, text, step)         markdown
    hparams(params, metrics, step)  the run's settings and its final metrics, at the end
    video(tag, frames, fps, step) frames (K, H, W, 3) uint8
    close()

- :class:`TensorBoardLogger`: event files in the run directory, HPARAMS in the run's own
  directory, evaluation videos as animated images.
- :class:`CSVLogger`: `metrics.csv` in the run directory, one row per (step, tag, value,
  wall_time), in the order they were logged (step order).

A resumed run continues its loggers: each drops what it had logged at steps after the
checkpoint (`purge_step`), so a curve has no duplicate points. Nothing outside this module
touches a backend's writer; `read_scalars` reads a run's series back for pgrun.compare.
"""

from __future__ import annotations

import csv
import io
import os
import struct
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

FINAL_METRIC = "hparams/final_return"
CSV_FILE = "metrics.csv"
CSV_COLUMNS = ("step", "tag", "value", "wall_time")


def flatten(cfg: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}, with lists and None as strings (HPARAMS takes scalars)."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


class Logger:
    """The interface. Every method does nothing here; a backend overrides what it keeps."""

    def scalars(self, metrics: dict[str, float], step: int) -> None:
        pass

    def text(self, tag: str, text: str, step: int = 0) -> None:
        pass

    def hparams(self, params: dict[str, Any], metrics: dict[str, float], step: int) -> None:
        pass

    def video(self, tag: str, frames: Sequence[np.ndarray], fps: float, step: int) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLogger(Logger):
    """One TensorBoard run in `run_dir`: scalars, the config as text, its HPARAMS entry.

    `params` (flat) are the HPARAMS of the run: the experiment and session-start records are
    written when the run starts, the session-end one with the final metrics (hparams()).
    `purge_step` (when resuming): TensorBoard drops the points this run logged at steps
    >= purge_step before the restart, and the start records are not written again.

    The events are those torch's SummaryWriter writes for the same calls (one per scalar, the
    same protos; tests/test_loggers.py compares the two files), written by EventFile in this
    thread and flushed after every call."""

    def __init__(self, run_dir: str | Path, params: dict[str, Any], purge_step: int | None = None):
        from pgrun.views import (
            choose_hparams,
            group_choices,
            hparams_summaries,
            inner_step_layout,
            swept_keys,
            trial_id,
        )

        self.events = EventFile(Path(run_dir), purge_step)
        # the swept keys first (pgrun/views.py), so the HPARAMS table shows what varies;
        # HPARAMS in the run's own directory (SummaryWriter.add_hparams would make a sub-run)
        swept = swept_keys()
        shown, differs = choose_hparams(params, swept, group_choices())
        trial = trial_id(shown, swept)
        exp, ssi, self._session_end = hparams_summaries(shown, differs, FINAL_METRIC, trial)
        if purge_step is None:  # a resumed run has them from its start
            for summary in (exp, ssi):
                self.events.summary(summary)
            layout = inner_step_layout(params)
            if layout is not None:
                self.events.summary(layout)
        self.events.flush()

    def scalars(self, metrics: dict[str, float], step: int) -> None:
        self.events.scalars(metrics, step)
        self.events.flush()

    def text(self, tag: str, text: str, step: int = 0) -> None:
        self.events.summary(torch_text_summary(tag, text), step)
        self.events.flush()

    def hparams(self, params: dict[str, Any], metrics: dict[str, float], step: int) -> None:
        self.events.scalars(metrics, step)
        self.events.summary(self._session_end)
        self.events.flush()

    def video(self, tag: str, frames: Sequence[np.ndarray], fps: float, step: int) -> None:
        self.events.summary(image_summary(tag, list(frames), fps), step)
        self.events.flush()

    def close(self) -> None:
        self.events.close()


class EventFile:
    """A TensorBoard event file in `log_dir`, written as a run goes: the events
    tensorboard's EventFileWriter and torch's SummaryWriter write (the file_version record
    first, then with `purge_step` the records that make TensorBoard drop the points at steps
    >= purge_step logged before a restart), each framed as a TFRecord and written in this
    thread. SummaryWriter hands every scalar to a writer thread through a queue and builds it
    through checks and conversions, about 40 us a scalar; this is a few."""

    def __init__(self, log_dir: Path, purge_step: int | None = None):
        from tensorboard.compat.proto import event_pb2, summary_pb2

        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        log_dir.mkdir(parents=True, exist_ok=True)
        self.path = new_event_path(log_dir)
        self._file = self.path.open("xb")  # never over another
        self.add(
            event_pb2.Event(
                wall_time=time.time(),
                file_version="brain.Event:2",
                source_metadata=event_pb2.SourceMetadata(
                    writer="tensorboard.summary.writer.event_file_writer"
                ),
            )
        )
        if purge_step is not None:
            self.add(event_pb2.Event(step=purge_step, file_version="brain.Event:2"))
            start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
            self.add(event_pb2.Event(step=purge_step, session_log=start))
        self.flush()

    def add(self, event) -> None:
        self._file.write(frame(event.SerializeToString()))

    def summary(self, summary, step: int | None = None) -> None:
        event = self._event(wall_time=time.time(), summary=summary)
        if step is not None:
            event.step = int(step)
        self.add(event)

    def scalars(self, metrics: dict[str, float], step: int) -> None:
        """One event per scalar, as SummaryWriter.add_scalar writes it."""
        value = self._summary.Value
        for tag, v in metrics.items():
            self.summary(self._summary(value=[value(tag=tag, simple_value=float(v))]), step)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def torch_text_summary(tag: str, text: str):
    """The Summary torch's SummaryWriter.add_text(tag, text) writes (its tag `<tag>/text_summary`,
    the TEXT tab renders it as markdown)."""
    from tensorboard.compat.proto import summary_pb2, tensor_pb2, tensor_shape_pb2
    from tensorboard.plugins.text import plugin_data_pb2

    plugin = summary_pb2.SummaryMetadata.PluginData(
        plugin_name="text", content=plugin_data_pb2.TextPluginData(version=0).SerializeToString()
    )
    tensor = tensor_pb2.TensorProto(
        dtype="DT_STRING",
        string_val=[text.encode(encoding="utf_8")],
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)]
        ),
    )
    meta = summary_pb2.SummaryMetadata(plugin_data=plugin)
    value = summary_pb2.Summary.Value(tag=tag + "/text_summary", metadata=meta, tensor=tensor)
    return summary_pb2.Summary(value=[value])


class CSVLogger(Logger):
    """`metrics.csv` in `run_dir`: a header, then one row per scalar, flushed after each call.

    Resuming (`purge_step`), the rows at steps >= purge_step are dropped first (the file is
    rewritten atomically), so the file stays in step order without duplicates. The final
    metrics of hparams() are rows too; text and videos are not kept."""

    def __init__(self, run_dir: str | Path, purge_step: int | None = None):
        self.path = Path(run_dir) / CSV_FILE
        if purge_step is not None and self.path.is_file():
            kept = [r for r in _read_csv(self.path) if int(r[0]) < purge_step]
            tmp = self.path.with_name(f".{CSV_FILE}.{os.getpid()}.tmp")
            with open(tmp, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(CSV_COLUMNS)
                w.writerows(kept)
            os.replace(tmp, self.path)
        # a new run starts the file: rows already there are an attempt's that stopped before
        # its first checkpoint (it starts again from iteration 0), as with its event files
        fresh = purge_step is None or not self.path.is_file()
        self._file = open(self.path, "w" if fresh else "a", newline="")  # noqa: SIM115 (closed in close())
        self._csv = csv.writer(self._file)
        if fresh:
            self._csv.writerow(CSV_COLUMNS)
            self._file.flush()

    def scalars(self, metrics: dict[str, float], step: int) -> None:
        now = time.time()
        self._csv.writerows((step, tag, repr(float(v)), f"{now:.3f}") for tag, v in metrics.items())
        self._file.flush()

    def hparams(self, params: dict[str, Any], metrics: dict[str, float], step: int) -> None:
        self.scalars(metrics, step)

    def close(self) -> None:
        self._file.close()


def _read_csv(path: Path) -> list[list[str]]:
    """The rows of a metrics.csv without its header; a row cut short by a crash is dropped."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return [r for r in rows[1:] if len(r) == len(CSV_COLUMNS) and r[0].isdigit()]


LOGGERS = ("tensorboard", "csv")


class Loggers(Logger):
    """Several loggers as one: each call goes to every backend, in order. `params` are the
    run's HPARAMS (hparams_of its config)."""

    def __init__(self, backends: Sequence[Logger], params: dict[str, Any] | None = None):
        self.backends, self.params = list(backends), params or {}

    def scalars(self, metrics: dict[str, float], step: int) -> None:
        for b in self.backends:
            b.scalars(metrics, step)

    log = scalars  # the name the trainer and evaluation use

    def text(self, tag: str, text: str, step: int = 0) -> None:
        for b in self.backends:
            b.text(tag, text, step)

    def hparams(self, params: dict[str, Any], metrics: dict[str, float], step: int) -> None:
        for b in self.backends:
            b.hparams(params, metrics, step)

    def video(self, tag: str, frames: Sequence[np.ndarray], fps: float, step: int) -> None:
        for b in self.backends:
            b.video(tag, frames, fps, step)

    def close(self) -> None:
        for b in self.backends:
            b.close()


def hparams_of(config: dict) -> dict[str, Any]:
    """The HPARAMS of a run: its resolved config, flattened."""
    return flatten(config)


def make_loggers(
    names: Sequence[str],
    run_dir: str | Path,
    config: dict,
    config_yaml: str,
    purge_step: int | None = None,
) -> Loggers:
    """The loggers `names` (LOGGERS) for a run in `run_dir`; a new run logs its config as text.
    `purge_step`: the run resumes from a checkpoint taken at purge_step - 1 env steps."""
    params = hparams_of(config)
    backends: list[Logger] = []
    for name in names:
        if name == "tensorboard":
            backends.append(TensorBoardLogger(run_dir, params, purge_step))
        elif name == "csv":
            backends.append(CSVLogger(run_dir, purge_step))
        else:
            raise ValueError(f"logger={name!r}: use one of {', '.join(LOGGERS)}")
    loggers = Loggers(backends, params)
    if purge_step is None:  # a resumed run has it from its start
        loggers.text("config", "    " + config_yaml.replace("\n", "\n    "), 0)
    return loggers


# ------------------------------------------------------------------------------ reading back


def read_scalars(run_dir: str | Path, tags: Sequence[str]) -> tuple[dict, float | None]:
    """A run's series of `tags`, {tag: [(step, value, wall_time), ...]} ordered by step, and the
    wall time its log starts at: from its TensorBoard event files where it has them (every
    event file: a resumed run adds one) as TensorBoard reads them (read_events), else from
    metrics.csv (starting at its first row)."""
    run_dir = Path(run_dir)
    if any(run_dir.glob("events.out.tfevents.*")):
        series, start = read_events(run_dir, tags)
        # by step: files created within the same second are not read in the order written
        return {tag: sorted(s) for tag, s in series.items()}, start
    path = run_dir / CSV_FILE
    if not path.is_file():
        return {}, None
    rows = _read_csv(path)
    series: dict[str, list] = {}
    for step, tag, value, wall in rows:
        if tag in tags:
            series.setdefault(tag, []).append((int(step), float(value), float(wall)))
    start = float(rows[0][3]) if rows else None
    return {t: sorted(s) for t, s in series.items()}, start


def read_events(run_dir: Path, tags: Sequence[str]) -> tuple[dict, float | None]:
    """The scalars of `tags` in the event files of `run_dir` as TensorBoard's EventAccumulator
    reads them, {tag: [(step, value, wall_time), ...]} in the order read, and the wall time of
    the first event (None when the files hold no scalar).

    The accumulator's rules: the files (names holding "tfevents", but not ".profile-empty")
    in the order of their names; a record cut short ends its file; from a file_version of 2 on,
    a SessionLog.START event at step s (a resumed writer's purge_step) drops every point at a
    step >= s read before it; before that, an event whose step is below the latest step drops
    the points of its own tags at steps >= its step. A tenth of the accumulator's time: the
    records are parsed by protobuf alone, without the pure-Python CRC check, so a damaged record
    is noticed only where it does not parse (then its file ends there too)."""
    from google.protobuf.message import DecodeError
    from tensorboard.compat.proto import event_pb2

    names = sorted(n for n in os.listdir(run_dir) if "tfevents" in n)
    files = [run_dir / n for n in names if not n.endswith(".profile-empty")]
    wanted = set(tags)
    series: dict[str, list] = {}
    first, version, latest, scalars = None, None, -1, False

    def purge(step: int, only: set[str] | None = None) -> None:
        for tag, points in series.items():
            if only is None or tag in only:
                points[:] = [p for p in points if p[0] < step]

    for path in files:
        for record in _records(path):
            try:
                event = event_pb2.Event.FromString(record)
            except DecodeError:
                break
            if first is None:
                first = event.wall_time
            if event.HasField("file_version"):
                version = _file_version(event.file_version)
            if version is not None and version >= 2:
                log = event.session_log
                if event.HasField("session_log") and log.status == event_pb2.SessionLog.START:
                    purge(event.step)
            elif event.step < latest and event.HasField("summary"):
                purge(event.step, {v.tag for v in event.summary.value})
            else:
                latest = event.step
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars = True
                    if value.tag in wanted:
                        point = (event.step, value.simple_value, event.wall_time)
                        series.setdefault(value.tag, []).append(point)
    return series, first if scalars else None


def _records(path: Path):
    """The records of a TFRecord file (each: an 8-byte length, its 4-byte CRC, the data, the
    data's CRC), up to the first one cut short."""
    data = path.read_bytes()
    pos = 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        end = pos + 12 + length
        if end + 4 > len(data):
            return
        yield data[pos + 12 : end]
        pos = end + 4


def write_event_file(log_dir: Path, events: Sequence[bytes]) -> Path:
    """An event file in `log_dir` of `events` (serialized Event protos, a file_version one
    first), framed as TFRecords (what _records reads back): its path. Written here rather than by
    tensorboard's RecordWriter, whose import brings in tensorboard's TensorFlow stub."""
    log_dir.mkdir(parents=True, exist_ok=True)
    path = new_event_path(log_dir)
    with path.open("xb") as f:  # never over another
        f.write(b"".join(frame(data) for data in events))
    return path


def new_event_path(log_dir: Path) -> Path:
    """A name for a new event file in `log_dir`, after those of this second and process."""
    import socket

    name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
    n = 0
    while (path := log_dir / f"{name}.{n}").exists():
        n += 1
    return path


def frame(data: bytes) -> bytes:
    """One TFRecord: the length (8 bytes), its masked CRC-32C, the data, the data's CRC."""
    header = struct.pack("<Q", len(data))
    return b"".join(
        (header, struct.pack("<I", masked_crc32c(header)), data,
         struct.pack("<I", masked_crc32c(data)))
    )  # fmt: skip


def _crc32c_table() -> list[int]:
    """The byte table of CRC-32C (Castagnoli, reflected polynomial 0x82F63B78)."""
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def masked_crc32c(data: bytes) -> int:
    """A TFRecord's checksum: the CRC-32C of `data`, rotated right by 15 bits plus 0xA282EAD8."""
    crc = 0xFFFFFFFF
    table = _CRC32C
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _file_version(text: str) -> float:
    """'brain.Event:2' -> 2.0; -1 when unreadable (TensorBoard's event_util.ParseFileVersion)."""
    try:
        return float(text.split("brain.Event:")[-1])
    except ValueError:
        return -1.0


# ------------------------------------------------------------------------ videos as images


def gif_bytes(frames: list[np.ndarray], fps: float) -> bytes:
    """An animated GIF of frames (H, W, 3) uint8 shown at `fps`, looping."""
    from PIL import Image

    images = [Image.fromarray(np.ascontiguousarray(f[..., :3])) for f in frames]
    buf = io.BytesIO()
    images[0].save(
        buf,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=max(20, round(1000 / fps)),
        loop=0,
    )
    return buf.getvalue()


def image_summary(tag: str, frames: list[np.ndarray], fps: float):
    """A TensorBoard image summary holding an animated GIF (the IMAGES tab plays it)."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    h, w = frames[0].shape[:2]
    image = Summary.Image(
        height=h, width=w, colorspace=3, encoded_image_string=gif_bytes(frames, fps)
    )
    return Summary(value=[Summary.Value(tag=tag, image=image)])
