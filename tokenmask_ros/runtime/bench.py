"""Latency and memory of the whole :class:`~tokenmask_ros.runtime.Segmenter` call.

One measurement function (:func:`bench_segmenter`) serves ``tokenmask bench`` and
``training/benchmark.py --backends``, so both report the same quantities:

- latency of the whole call (wall clock around ``segmenter(frame)``: median, p90, p99) and
  of its three stages from :attr:`Segmenter.last_timing` (preprocess, inference,
  postprocess), over ``repeats`` timed calls after ``warmup`` untimed ones, cycling through
  a few different frames;
- FPS = 1000 / mean latency (back-to-back calls on one thread);
- peak memory: on CPU the process's peak resident set (``VmHWM``, reset through
  ``/proc/self/clear_refs`` after the backend is built, so a one-off ONNX export does not
  count) minus the resident set before the backend was built, i.e. model + runtime
  session + activations; ``resource.getrusage`` where ``/proc`` is not available (then
  only growth beyond the process's earlier peak shows). On CUDA:
  ``torch.cuda.max_memory_allocated`` for the torch backend (its allocator sees
  everything), the drop of free device memory (``torch.cuda.mem_get_info``) for the
  others (their allocations bypass torch's allocator).

A combination that cannot run here (backend not installed, no GPU, fp16 on CPU) becomes a
``skipped`` row whose ``reason`` is the backend's one-sentence explanation; an unexpected
failure becomes an ``error`` row. Nothing here asserts speed: timing belongs
in benchmarks, never in tests.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import datetime
import gc
import importlib
import math
import os
import platform
import re
import resource
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from tokenmask_ros.runtime.backends import BackendUnavailable
from tokenmask_ros.runtime.preprocess import InputError

STAGES = ('preprocess', 'inference', 'postprocess')
NUM_FRAMES = 4  # distinct synthetic frames cycled through while timing


@dataclass
class LatencyStats:
    """Milliseconds: median, 90th and 99th percentile and mean of a list of samples."""

    median: float
    p90: float
    p99: float
    mean: float

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> LatencyStats:
        samples = np.asarray(samples_ms, np.float64)
        return cls(float(np.median(samples)), float(np.percentile(samples, 90)),
                   float(np.percentile(samples, 99)), float(samples.mean()))


@dataclass
class BenchResult:
    """One (backend, precision, frame size) combination; ``status`` ok | skipped | error."""

    backend: str
    precision: str
    device: str
    width: int
    height: int
    status: str = 'ok'
    reason: str = ''
    input_size: str = ''
    warmup: int = 0
    repeats: int = 0
    total: LatencyStats | None = None
    stages: dict[str, LatencyStats] = field(default_factory=dict)
    fps: float | None = None
    peak_mem_mb: float | None = None
    mem_method: str = ''

    @property
    def ok(self) -> bool:
        return self.status == 'ok'

    def row(self) -> dict:
        """Flat values for CSV files (``CSV_COLUMNS``); missing numbers are empty."""
        values = {f.name: getattr(self, f.name) for f in fields(self)
                  if f.name not in ('total', 'stages')}
        for name, stats in (('total', self.total), *((s, self.stages.get(s)) for s in STAGES)):
            for key in ('median', 'p90', 'p99'):
                values[f'{name}_ms_{key}'] = None if stats is None else getattr(stats, key)
        return values


CSV_COLUMNS = ('backend', 'precision', 'device', 'width', 'height', 'input_size', 'status',
               'reason', 'warmup', 'repeats',
               *(f'{n}_ms_{k}' for n in ('total', *STAGES) for k in ('median', 'p90', 'p99')),
               'fps', 'peak_mem_mb', 'mem_method')


# --------------------------------------------------------------------------- memory


def _proc_status_kb(key: str) -> int | None:
    try:
        match = re.search(rf'^{key}:\s+(\d+) kB', Path('/proc/self/status').read_text(), re.M)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``), so a
    previous combination's freed memory does not hide in the next one's RSS baseline."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL('libc.so.6').malloc_trim(0)


class PeakMemory:
    """Peak memory of what runs between :meth:`start` (before the backend is built),
    :meth:`reset_peak` (after it is built) and :meth:`stop`, in MB; see the module doc."""

    def __init__(self, device: str, backend_name: str):
        self.device, self.backend_name = device, backend_name
        self.method = ''
        self._baseline = 0

    @property
    def _cuda(self) -> bool:
        return self.device.startswith('cuda')

    def start(self) -> None:
        _release_freed_memory()
        if self._cuda:
            import torch

            torch.cuda.synchronize(self.device)
            if self.backend_name == 'torch':
                self.method = 'cuda_max_allocated'
                self._baseline = torch.cuda.memory_allocated(self.device)
            else:
                self.method = 'cuda_mem_get_info'
                self._baseline = torch.cuda.mem_get_info(self.device)[0]
        elif _proc_status_kb('VmRSS') is not None:
            self.method = 'rss_hwm'
            self._baseline = _proc_status_kb('VmRSS') * 1024
        else:
            self.method = 'ru_maxrss'
            self._baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def reset_peak(self) -> None:
        if self._cuda:
            import torch

            if self.method == 'cuda_max_allocated':
                torch.cuda.reset_peak_memory_stats(self.device)
        elif self.method == 'rss_hwm':
            with contextlib.suppress(OSError):  # "5": peak RSS := current RSS (Linux >= 4.0)
                Path('/proc/self/clear_refs').write_text('5')

    def stop(self) -> float:
        if self._cuda:
            import torch

            torch.cuda.synchronize(self.device)
            if self.method == 'cuda_max_allocated':
                peak = torch.cuda.max_memory_allocated(self.device)
                return max(peak - self._baseline, 0) / 2**20
            return max(self._baseline - torch.cuda.mem_get_info(self.device)[0], 0) / 2**20
        if self.method == 'rss_hwm':
            peak = (_proc_status_kb('VmHWM') or 0) * 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return max(peak - self._baseline, 0) / 2**20


# --------------------------------------------------------------------------- measuring


def synthetic_frames(width: int, height: int, count: int = NUM_FRAMES,
                     seed: int = 0) -> list[np.ndarray]:
    """``count`` RGB uint8 synthetic scenes of ``width`` x ``height``."""
    from tokenmask_ros.synthetic import SceneGenerator

    generator = SceneGenerator(height=height, width=width, seed=seed)
    return [generator.scene(index).image for index in range(count)]


def time_calls(segmenter, frames: Sequence[np.ndarray], warmup: int, repeats: int
               ) -> tuple[LatencyStats, dict[str, LatencyStats]]:
    """Time ``repeats`` calls (after ``warmup``), cycling through ``frames``.

    Returns the statistics of the whole call (wall clock) and of each stage.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f'need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}')
    totals, stages = [], {stage: [] for stage in STAGES}
    for index in range(warmup + repeats):
        frame = frames[index % len(frames)]
        start = time.perf_counter()
        segmenter(frame)
        elapsed = 1e3 * (time.perf_counter() - start)
        if index >= warmup:
            totals.append(elapsed)
            for stage in STAGES:
                stages[stage].append(getattr(segmenter.last_timing, stage))
    return LatencyStats.of(totals), {s: LatencyStats.of(v) for s, v in stages.items()}


def _reason(error: BaseException) -> str:
    """The first line of an error, saying "not installed" for a missing module."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f'not installed here ({text})' if isinstance(error, ModuleNotFoundError) else text


def bench_segmenter(model_path: str | Path, backend: str, precision: str, size: tuple[int, int],
                    *, device: str = 'auto', warmup: int = 3, repeats: int = 20,
                    frames: Sequence[np.ndarray] | None = None, cache_dir=None,
                    **segmenter_options) -> BenchResult:
    """Build a :class:`Segmenter` and time it on ``frames`` (default: synthetic scenes).

    ``size``: (width, height) of the frames. ``segmenter_options`` go to the Segmenter
    (thresholds, ``label_divisor``). Never raises for a combination that cannot run: the
    result is then ``skipped`` (or ``error``) with the reason.
    """
    from tokenmask_ros.runtime.backends import resolve_device
    from tokenmask_ros.runtime.segmenter import Segmenter

    width, height = size
    try:
        device = resolve_device(device)
        if device.startswith('cuda'):
            import torch

            if not torch.cuda.is_available():
                raise BackendUnavailable(f'device {device!r} requested but CUDA is not '
                                         'available')
    except (ValueError, ImportError, BackendUnavailable) as error:
        return BenchResult(backend, precision, device, width, height, 'skipped', _reason(error))
    result = BenchResult(backend, precision, device, width, height, warmup=warmup,
                         repeats=repeats)
    memory = PeakMemory(device, backend)
    memory.start()
    try:
        segmenter = Segmenter(model_path, backend, device, precision, cache_dir=cache_dir,
                              **segmenter_options)
    except (BackendUnavailable, ImportError) as error:
        return BenchResult(backend, precision, device, width, height, 'skipped',
                           _reason(error))
    except Exception as error:  # one failing combination must not end a run
        return BenchResult(backend, precision, device, width, height, 'error',
                           f'{type(error).__name__}: {_reason(error)}')
    try:
        result.precision = segmenter.backend.precision
        result.input_size = 'x'.join(str(s) for s in segmenter.input_size[::-1])
        if frames is None:
            frames = synthetic_frames(width, height)
        memory.reset_peak()
        result.total, result.stages = time_calls(segmenter, frames, warmup, repeats)
        result.peak_mem_mb = memory.stop()
        result.mem_method = memory.method
        result.fps = 1e3 / result.total.mean if result.total.mean > 0 else math.inf
    except InputError as error:
        result.status, result.reason = 'skipped', str(error)
    except Exception as error:
        result.status, result.reason = 'error', f'{type(error).__name__}: {_reason(error)}'
    finally:
        segmenter.close()
    return result


def run_grid(model_path: str | Path, backends: Iterable[str], precisions: Iterable[str],
             sizes: Iterable[tuple[int, int]], progress=None, **options) -> list[BenchResult]:
    """:func:`bench_segmenter` for every backend x precision x size, in that nesting.

    A backend or (backend, precision) that was skipped once is not retried for the other
    sizes (its reason does not depend on the frame size). ``progress``: called with each
    result as it is done.
    """
    results, frames = [], {}
    for backend in backends:
        for precision in precisions:
            unavailable = None  # a skip while building the backend holds for every size
            for size in sizes:
                if unavailable is not None:
                    result = BenchResult(backend, precision, unavailable.device, *size,
                                         'skipped', unavailable.reason)
                else:
                    if size not in frames:
                        frames[size] = synthetic_frames(*size)
                    result = bench_segmenter(model_path, backend, precision, size,
                                             frames=frames[size], **options)
                    if result.status == 'skipped' and not result.input_size:
                        unavailable = result
                results.append(result)
                if progress is not None:
                    progress(result)
    return results


# --------------------------------------------------------------------------- reporting


def cpu_name() -> str:
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str = 'auto') -> str:
    """One sentence: date, CPU (and GPU), library versions, torch threads."""
    import torch

    parts = [f'Date {datetime.datetime.now().isoformat(timespec="seconds")}',
             f'{cpu_name()}, {os.cpu_count()} cores']
    if device != 'cpu' and torch.cuda.is_available():
        parts.append(torch.cuda.get_device_name())
    parts.append(f'torch {torch.__version__} ({torch.get_num_threads()} threads)')
    for module in ('onnxruntime', 'openvino', 'tensorrt'):
        with contextlib.suppress(ImportError):
            parts.append(f'{module} {importlib.import_module(module).__version__}')
    parts.append(f'python {platform.python_version()}')
    return '; '.join(parts) + '.'



def _ms(value: float | None) -> str:
    return '–' if value is None else f'{value:.1f}'


def markdown_table(results: Sequence[BenchResult]) -> str:
    """One row per result; skipped / failed rows carry their reason in the last column."""
    header = ('| Backend | Precision | Device | Frame | Median (ms) | p90 (ms) | p99 (ms) | '
              'Pre (ms) | Infer (ms) | Post (ms) | FPS | Peak mem (MB) | Notes |')
    lines = [header, '|' + '---|' * header.count(' | ') + '---|']
    for r in results:
        frame = f'{r.width}x{r.height}'
        if not r.ok:
            cells = [r.backend, r.precision, r.device, frame, *(['–'] * 8),
                     f'{r.status}: {r.reason}'.replace('|', '/')]
        else:
            cells = [r.backend, r.precision, r.device, frame, _ms(r.total.median),
                     _ms(r.total.p90), _ms(r.total.p99),
                     *(_ms(r.stages[s].median) for s in STAGES), f'{r.fps:.1f}',
                     _ms(r.peak_mem_mb), f'input {r.input_size}, {r.repeats} runs, '
                     f'mem {r.mem_method}']
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def write_csv(path: str | Path, results: Sequence[BenchResult]) -> Path:
    path = Path(path)
    with path.open('w', newline='') as handle:
        writer = csv.DictWriter(handle, fieldnames=list(CSV_COLUMNS), extrasaction='ignore')
        writer.writeheader()
        for result in results:
            writer.writerow({k: ('' if v is None else f'{v:.6g}' if isinstance(v, float) else v)
                             for k, v in result.row().items()})
    return path


def plot_stages(path: str | Path, results: Sequence[BenchResult], title: str = '') -> Path:
    """Stacked bars (preprocess / inference / postprocess medians) per measured combination."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    done = [r for r in results if r.ok]
    figure, axis = plt.subplots(figsize=(max(5.0, 1.1 * len(done) + 2), 4.5))
    if done:
        x = np.arange(len(done))
        bottom = np.zeros(len(done))
        for stage, color in zip(STAGES, ('tab:green', 'tab:blue', 'tab:orange'), strict=True):
            heights = np.array([r.stages[stage].median for r in done])
            axis.bar(x, heights, 0.6, bottom=bottom, color=color, label=stage,
                     edgecolor='black', linewidth=0.5)
            bottom += heights
        for xi, r in zip(x, done, strict=True):
            axis.text(xi, bottom[xi], f'{r.total.median:.1f}', ha='center', va='bottom',
                      fontsize=7)
        axis.set_xticks(x, [f'{r.backend}\n{r.precision} {r.device}\n{r.width}x{r.height}'
                            for r in done], fontsize=7)
        axis.set_ylabel('median latency per frame (ms)')
        axis.legend(fontsize=8)
    else:
        axis.text(0.5, 0.5, 'no combination could run here', ha='center', va='center')
        axis.set_axis_off()
    skipped = len(results) - len(done)
    axis.set_title((title + '\n' if title else '') + 'Segmenter stages (median; number: '
                   'median of the whole call)'
                   + (f'; {skipped} combination(s) skipped, see bench.md' if skipped else ''),
                   fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)


# --------------------------------------------------------------------------- side by side

#: What ``tokenmask bench --all`` compares, in table order; the first is the reference of
#: the ratio and agreement columns. A combination that cannot run here becomes a skipped row.
ALL_COMBINATIONS = (('onnxruntime', 'fp32'), ('torch', 'fp32'), ('onnxruntime', 'int8'),
                    ('openvino', 'fp32'), ('openvino', 'int8'), ('tensorrt', 'fp32'),
                    ('tensorrt', 'fp16'))
REFERENCE = ALL_COMBINATIONS[0]
SIDE_BY_SIDE_COLUMNS = ('backend', 'precision', 'model', 'device', 'status', 'reason', 'describe',
                        'median_ms', 'p90_ms', 'ratio_to_reference', 'pixel_agreement',
                        'repeats', 'width', 'height')


@dataclass
class SideBySideRow:
    """One combination of :func:`bench_side_by_side`: whole-call latency (ms), its median's
    ratio to the reference's (ONNX Runtime fp32) and the fraction of pixels whose panoptic id
    equals the reference's on the same frames. ``model``: the file name of a reference
    graph given to :func:`bench_side_by_side` (empty for the benchmarked model)."""

    backend: str
    precision: str
    device: str
    width: int
    height: int
    model: str = ''
    status: str = 'ok'
    reason: str = ''
    describe: str = ''
    median_ms: float | None = None
    p90_ms: float | None = None
    ratio_to_reference: float | None = None
    pixel_agreement: float | None = None
    repeats: int = 0

    @property
    def ok(self) -> bool:
        return self.status == 'ok'

    def _with_model(self, text: str) -> str:
        return text + (f' ({self.model})' if self.model else '')

    @property
    def backend_label(self) -> str:
        """The backend, with the reference graph's file name where there is one."""
        return self._with_model(self.backend)

    @property
    def label(self) -> str:
        """'backend precision', with the reference graph's file name where there is one."""
        return self._with_model(f'{self.backend} {self.precision}')


def bench_side_by_side(model_path: str | Path, size: tuple[int, int], *, device: str = 'auto',
                       warmup: int = 2, repeats: int = 20,
                       combinations: Sequence[tuple[str, str]] = ALL_COMBINATIONS,
                       cache_dir=None, frames: Sequence[np.ndarray] | None = None,
                       progress=None, reference_graph: str | Path | None = None,
                       **segmenter_options) -> list[SideBySideRow]:
    """Time every (backend, precision) of ``combinations`` on the same frames in one run.

    All Segmenters are built first; then each round times one call of each, in an order
    rotated every round, so a load change on a shared machine (another process, thermal
    throttling) hits every combination alike instead of whichever ran during it. Before
    timing, each one segments every frame once untimed, and its panoptic ids are compared
    pixel by pixel with the first combination's (the reference). ``size``: (width, height)
    of the frames (default: synthetic scenes). Combinations that cannot run here are
    ``skipped`` rows with their reason; this function does not raise for them.
    ``progress``: called with a short text as each stage is done. ``reference_graph``: an
    exported ``.onnx`` file (e.g. ``tokenmask export --selection all``, the graph before
    query selection, or an export of an earlier version) timed on onnxruntime fp32 as the
    first row, so ratios and pixel agreement are against it.
    """
    from tokenmask_ros.runtime.backends import resolve_device
    from tokenmask_ros.runtime.segmenter import Segmenter

    if repeats < 1 or warmup < 0:
        raise ValueError(f'need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}')
    width, height = size
    frames = list(frames) if frames is not None else synthetic_frames(width, height)
    device = resolve_device(device)
    # (model file, its name in the table: '' for the benchmarked model, backend, precision)
    runs = [(model_path, '', backend, precision) for backend, precision in combinations]
    if reference_graph is not None:
        runs.insert(0, (reference_graph, Path(reference_graph).name, *REFERENCE))
    rows, segmenters = [], []
    try:
        for path, name, backend, precision in runs:
            row = SideBySideRow(backend, precision, device, width, height, repeats=repeats,
                                model=name)
            rows.append(row)
            try:
                segmenter = Segmenter(path, backend, device, precision,
                                      cache_dir=cache_dir, **segmenter_options)
            except (BackendUnavailable, ImportError) as error:
                row.status, row.reason = 'skipped', _reason(error)
            except Exception as error:  # one failing combination must not end a run
                row.status, row.reason = 'error', f'{type(error).__name__}: {_reason(error)}'
            else:
                segmenters.append((row, segmenter))
                row.describe = segmenter.backend.describe()
            if progress is not None:
                progress(f'{row.label}: {row.status}')
        reference = None
        for row, segmenter in segmenters:
            panoptic = [segmenter(frame).panoptic for frame in frames]
            if row is rows[0]:
                reference = panoptic
            if reference is not None:
                equal = sum(int((a == b).sum()) for a, b in zip(panoptic, reference, strict=True))
                row.pixel_agreement = equal / sum(p.size for p in reference)
            for index in range(warmup):
                segmenter(frames[index % len(frames)])
        samples = {id(row): [] for row, _ in segmenters}
        for index in range(repeats):
            frame = frames[index % len(frames)]
            shift = index % max(len(segmenters), 1)
            for row, segmenter in segmenters[shift:] + segmenters[:shift]:
                start = time.perf_counter()
                segmenter(frame)
                samples[id(row)].append(1e3 * (time.perf_counter() - start))
        for row, _ in segmenters:
            stats = LatencyStats.of(samples[id(row)])
            row.median_ms, row.p90_ms = stats.median, stats.p90
        base = rows[0].median_ms if rows and rows[0].ok else None
        for row in rows:
            if base and row.median_ms is not None:
                row.ratio_to_reference = row.median_ms / base
    finally:
        for _, segmenter in segmenters:
            segmenter.close()
    return rows


def _cell(value: float | None, digits: int = 1, suffix: str = '') -> str:
    return '–' if value is None else f'{value:.{digits}f}{suffix}'


def side_by_side_table(rows: Sequence[SideBySideRow]) -> str:
    """Markdown: one row per combination, skipped ones with their reason."""
    reference = rows[0].label if rows else 'reference'
    lines = [f'| Backend | Precision | Device | Median (ms) | p90 (ms) | x {reference} | '
             f'Pixels = {reference} | Notes |', '|---|---|---|---|---|---|---|---|']
    for r in rows:
        agreement = None if r.pixel_agreement is None else 100 * r.pixel_agreement
        notes = r.describe if r.ok else f'{r.status}: {r.reason}'
        lines.append('| ' + ' | '.join((
            r.backend_label, r.precision, r.device, _cell(r.median_ms), _cell(r.p90_ms),
            _cell(r.ratio_to_reference, 2), _cell(agreement, 2, ' %'),
            notes.replace('|', '/'))) + ' |')
    return '\n'.join(lines)


def write_side_by_side_csv(path: str | Path, rows: Sequence[SideBySideRow]) -> Path:
    path = Path(path)
    with path.open('w', newline='') as handle:
        writer = csv.DictWriter(handle, fieldnames=list(SIDE_BY_SIDE_COLUMNS))
        writer.writeheader()
        for row in rows:
            values = {name: getattr(row, name) for name in SIDE_BY_SIDE_COLUMNS}
            writer.writerow({k: ('' if v is None else f'{v:.6g}' if isinstance(v, float) else v)
                             for k, v in values.items()})
    return path


def plot_side_by_side(path: str | Path, rows: Sequence[SideBySideRow], title: str = '') -> Path:
    """Bars of the median latency (whiskers up to p90), labelled with the ratio to the
    reference and the pixel agreement."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    done = [r for r in rows if r.ok]
    figure, axis = plt.subplots(figsize=(max(5.0, 1.2 * len(done) + 2), 4.5))
    if done:
        x = np.arange(len(done))
        medians = np.array([r.median_ms for r in done])
        spread = np.array([r.p90_ms - r.median_ms for r in done])
        axis.bar(x, medians, 0.6, color='tab:blue', edgecolor='black', linewidth=0.5,
                 yerr=[np.zeros_like(spread), spread], capsize=3)
        for xi, r in zip(x, done, strict=True):
            agreement = '' if r.pixel_agreement is None else f'\n{100 * r.pixel_agreement:.1f} %'
            axis.text(xi, r.p90_ms, f'{_cell(r.ratio_to_reference, 2)}x{agreement}',
                      ha='center', va='bottom', fontsize=7)
        axis.set_xticks(x, [f'{r.backend}\n{r.precision}' + (f'\n{r.model}' if r.model else '')
                            for r in done], fontsize=8)
        axis.set_ylabel('median latency per frame (ms), whisker: p90')
        axis.set_ylim(0, 1.25 * max(r.p90_ms for r in done))
    else:
        axis.text(0.5, 0.5, 'no combination could run here', ha='center', va='center')
        axis.set_axis_off()
    skipped = len(rows) - len(done)
    axis.set_title((title + '\n' if title else '') + 'Backends side by side (label: ratio '
                   'to the reference, pixels equal to it)'
                   + (f'; {skipped} skipped, see bench_all.md' if skipped else ''), fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)
