"""What a ``.hemp`` file holds and where its bytes go, without decoding the payloads.

:func:`inspect` verifies the checksums and structure and reports every leaf (path, shape,
dtype, codebook, coder model, bytes by part); :func:`format_inspection` prints it as a
table. :func:`quantized_symbols` yields the coded symbols of each quantized leaf, for
measuring the coder. The parts are those of ``FORMAT.md``.
"""

from __future__ import annotations

import dataclasses
import math

from hemp_jax.codec import context_models, legacy, magnitude, records, trellis
from hemp_jax.codec.container import (
  DEFAULT_MAX_BYTES,
  DEFAULT_MAX_ELEMENTS,
  MAGIC,
  as_buffer,
  leaf_name,
  malformed_input,
  parse_header,
  record_reader,
)
from hemp_jax.codec.records import DQ_KINDS, KIND_FLOAT, KIND_QUANTIZED

__all__ = ["LeafReport", "Report", "inspect", "format_inspection", "quantized_symbols"]


@dataclasses.dataclass
class LeafReport:
  """One leaf of an :func:`inspect` report. Byte counts exclude the leaf's header entry."""

  path: str
  shape: tuple
  dtype: str
  kind: str  # "quantized", "dq" (dependent quantization) or "float"
  num_params: int
  record_bytes: int  # body (+ its 4-byte checksum in versions 1-2)
  levels: int | None = None  # K, the codebook size (dq: the span of the levels k)
  used_levels: int | None = None
  order: int | None = None  # context order of the coder (None: nothing coded)
  model: str = ""  # coder model (version 3): static / unit / polya, and the layout
  codebook_bytes: int = 0  # K header, used-level bitmap, level values (dq: step, range)
  table_bytes: int = 0  # coder model section (context tables)
  payload_bytes: int = 0  # range coder payload (float leaves: the stored values)
  storage: str = ""  # float leaves: raw / constant / zlib / planes

  @property
  def bits_per_param(self) -> float:
    return 8.0 * self.record_bytes / self.num_params if self.num_params else 0.0


@dataclasses.dataclass
class Report:
  """What :func:`inspect` finds in a file."""

  version: int
  file_bytes: int
  header_bytes: int  # including the header checksum (version 3: the file checksum)
  leaves: list

  @property
  def num_params(self) -> int:
    return sum(l.num_params for l in self.leaves)

  @property
  def quantized_params(self) -> int:
    return sum(l.num_params for l in self.leaves if l.kind != "float")

  @property
  def bits_per_param(self) -> float:
    return 8.0 * self.file_bytes / self.num_params if self.num_params else 0.0

  def as_dict(self) -> dict:
    """A JSON-friendly dict: totals, and every leaf with its bits/param."""
    leaves = []
    for l in self.leaves:
      d = dataclasses.asdict(l)
      d["shape"] = list(l.shape)
      d["bits_per_param"] = l.bits_per_param
      leaves.append(d)
    return {
      "version": self.version,
      "file_bytes": self.file_bytes,
      "header_bytes": self.header_bytes,
      "num_params": self.num_params,
      "quantized_params": self.quantized_params,
      "bits_per_param": self.bits_per_param,
      "totals": self.totals(),
      "leaves": leaves,
    }

  def totals(self) -> dict:
    """Byte totals by part of the file ("header" includes the header checksum of versions
    1-2 and the one file checksum of version 3, which has no record checksums)."""
    return {
      "file": self.file_bytes,
      "header": self.header_bytes,
      "record_checksums": 4 * len(self.leaves) if self.version < 3 else 0,
      "payload": sum(l.payload_bytes for l in self.leaves if l.kind != "float"),
      "tables": sum(l.table_bytes for l in self.leaves),
      "codebooks": sum(l.codebook_bytes for l in self.leaves),
      "float": sum(l.record_bytes - 4 for l in self.leaves if l.kind == "float"),
    }


def quantized_symbols(blob, min_size: int = 0):
  """Yields ``(path, shape, levels, coded_bytes, symbols)`` for each quantized leaf of a
  ``.hemp`` file written by the version-3 coder with at least ``min_size`` weights and a
  coder section: ``levels`` the used levels, ``coded_bytes`` the size of its model section
  + payload and ``symbols`` (the leaf's shape) its indices into ``levels``. For measuring
  the coder; leaves of version-1/2 files are skipped (:func:`hemp_jax.codec.reencode`
  first).

  Raises:
    FormatError: ``blob`` is not a valid ``.hemp`` file.
  """
  buf = as_buffer(blob)
  entries, _ = parse_header(buf, DEFAULT_MAX_ELEMENTS)
  for e in entries:
    n = math.prod(e.shape)
    if e.kind != KIND_QUANTIZED or n < max(1, min_size) or e.version < 3:
      continue
    r = record_reader(buf, e)
    _, _, levels = records.parse_quantized_head(r, e.dtype, n, e.version)
    if levels.size < 2:
      continue
    coded = r.remaining
    symbols = records.decode_symbols(r, e.shape, levels, e.version)
    yield leaf_name(e.comps), e.shape, levels, coded, symbols


def _leaf_report(buf: bytes, e) -> LeafReport:
  r = record_reader(buf, e)
  n = math.prod(e.shape)
  rep = LeafReport(
    path=leaf_name(e.comps),
    shape=e.shape,
    dtype=str(e.dtype),
    kind="quantized" if e.kind == KIND_QUANTIZED else "dq" if e.kind in DQ_KINDS else "float",
    num_params=n,
    record_bytes=e.length + (4 if e.version < 3 else 0),
  )
  if e.kind == KIND_FLOAT:
    mode = r.u8("float record mode")
    rep.storage = records.FLOAT_MODES.get(mode, f"mode {mode}")
    rep.payload_bytes = r.remaining
    return rep
  if e.kind in DQ_KINDS:
    return _dq_report(r, e, rep, n)
  k, used, levels = records.parse_quantized_head(r, e.dtype, n, e.version)
  rep.levels, rep.used_levels = k, int(used.sum())
  rep.codebook_bytes = r.pos - e.offset
  if n and levels.size >= 2:
    if e.version >= 3 and records.magnitude_coded(r):
      head = r.u8("coder model header")
      _magnitude_report(r, rep, f"magnitude/L{head >> 4 & 1}")
      return rep
    if e.version >= 3:
      info = context_models.parse_model(r, e.shape, levels.size)
      rep.model = f"{context_models.KIND_NAMES[info.kind]}/L{info.layout}" + (
        f"/P{info.period}" if info.period > 1 else ""
      )
    else:
      info = legacy.parse_model(r, e.shape, levels.size)
    rep.order, rep.table_bytes = info.order, info.model_bytes
    rep.payload_bytes = r.remaining
  return rep


def _dq_report(r, e, rep: LeafReport, n: int) -> LeafReport:
  """The parts of a dq record: step and level range, coder header and tables, payload."""
  _, layout, levels, nu = records.parse_dq_head(r, e.shape, n, e.kind)
  rep.codebook_bytes = r.pos - e.offset
  name = "dq" if nu == 2 else f"dq{1 << nu}"  # dq16: a trellis of 16 states
  rep.model = f"{name}/L{layout}"
  if levels is not None:
    rep.levels, rep.used_levels = int(levels[-1] - levels[0] + 1), int(levels.size)
    if levels.size > 1 and records.dq_magnitude_coded(r):
      r.u8("dq coder header")
      _magnitude_report(r, rep, f"{name}-magnitude/L{layout}")
    elif levels.size > 1:
      start = r.pos
      trellis.parse_tables(r, levels.size)
      rep.order, rep.table_bytes = 0, r.pos - start
      rep.payload_bytes = r.remaining
  return rep


def _magnitude_report(r, rep: LeafReport, name: str) -> None:
  """The model section (its header byte counted) and payload of a magnitude coder section,
  the reader just past its header byte."""
  info = magnitude.parse_model(r)
  rep.model, rep.order = name, 0
  rep.table_bytes, rep.payload_bytes = 1 + info.model_bytes, r.remaining


def inspect(
  blob, *, max_elements: int = DEFAULT_MAX_ELEMENTS, max_bytes: int = DEFAULT_MAX_BYTES
) -> Report:
  """Structure and size breakdown of a ``.hemp`` file, without decoding the payloads.

  Checksums and structure are verified; raises :class:`FormatError` like
  :func:`hemp_jax.codec.decompress`.
  """
  buf = as_buffer(blob)
  with malformed_input():
    entries, header_end = parse_header(buf, int(max_elements), int(max_bytes))
    leaves = [_leaf_report(buf, e) for e in entries]
    return Report(
      version=buf[len(MAGIC)],
      file_bytes=len(buf),
      header_bytes=header_end + (4 if buf[len(MAGIC)] >= 3 else 0),
      leaves=leaves,
    )


_COLUMNS = (
  "path",
  "shape",
  "dtype",
  "kind",
  "K",
  "used",
  "order",
  "model",
  "payload",
  "table",
  "codebook",
  "record",
  "bits/param",
)


def _row(l: LeafReport) -> tuple:
  quant = l.kind != "float"
  return (
    l.path or "<root>",
    "x".join(str(d) for d in l.shape) or "()",
    l.dtype,
    l.kind if quant else f"float/{l.storage}",
    str(l.levels) if quant else "-",
    str(l.used_levels) if quant else "-",
    str(l.order) if l.order is not None else "-",
    l.model or "-",
    str(l.payload_bytes),
    str(l.table_bytes),
    str(l.codebook_bytes),
    str(l.record_bytes),
    f"{l.bits_per_param:.4f}",
  )


def table_lines(rows: list, left: int = 4) -> list[str]:
  """Aligned text rows under a rule: the first ``left`` columns left-aligned, the rest right."""
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  lines = []
  for j, r in enumerate(rows):
    lines.append(
      "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    )
    if j == 0:
      lines.append("-" * len(lines[0]))
  return lines


def format_inspection(report: Report) -> str:
  """A human-readable table of an :func:`inspect` report."""
  lines = table_lines([_COLUMNS] + [_row(l) for l in report.leaves])
  t = report.totals()
  lines.append("")
  lines.append(
    f".hemp v{report.version}: {report.file_bytes} bytes, {report.num_params} "
    f"params ({report.quantized_params} quantized), "
    f"{report.bits_per_param:.4f} bits/param"
  )
  lines.append(
    f"  header {t['header']} B, record checksums {t['record_checksums']} B, payload "
    f"{t['payload']} B, tables {t['tables']} B, codebooks {t['codebooks']} B, "
    f"float values {t['float']} B"
  )
  return "\n".join(lines)
