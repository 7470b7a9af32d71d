"""The ``tokenmask`` command line: one entry point, one subcommand per job.

Subcommands register themselves in :data:`COMMANDS`; each has its own ``--help``.
"""

from __future__ import annotations

import argparse
import inspect
import shlex
import sys
from pathlib import Path

from tokenmask_ros import __version__
from tokenmask_ros.bundled import BUNDLED_MODELS, not_found_message, resolve_model_path
from tokenmask_ros.defaults import (  # torch-free: building the parser stays fast
    BACKENDS,
    DECODED_QUERIES,
    LABEL_DIVISOR,
    MAX_IMAGE_PIXELS,
    OVERLAP_THRESHOLD,
    PRECISIONS,
    SCORE_THRESHOLD,
    SELECTIONS,
    TRACK_MAX_AGE,
    TRACK_MIN_IOU,
)


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``WIDTHxHEIGHT`` (argparse type) into ``(width, height)``; shared by the scripts."""
    try:
        width, height = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'expected WIDTHxHEIGHT, e.g. 640x480, got {text!r}') from None
    if width < 16 or height < 16:
        raise argparse.ArgumentTypeError(f'size must be at least 16x16, got {text!r}')
    return width, height


def cmd_synth(args: argparse.Namespace) -> int:
    """Write synthetic scenes as PNG images (and, with --preview, ground-truth overlays)."""
    import numpy as np
    from tqdm import tqdm

    from tokenmask_ros import viz
    from tokenmask_ros.image_io import write_rgb
    from tokenmask_ros.synthetic import SYNTHETIC_CLASSES, SceneGenerator

    width, height = args.size
    generator = SceneGenerator(height=height, width=width, seed=args.seed)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    class_colors = np.array([c.color for c in SYNTHETIC_CLASSES], np.uint8)
    for index in tqdm(range(args.count), desc='synth', unit='scene', disable=args.quiet):
        scene = generator.scene(index)
        name = f'scene_{index:05d}'
        write_rgb(out / f'{name}.png', scene.image)
        if args.preview:
            names = [c.name for c in SYNTHETIC_CLASSES]
            preview = np.hstack([scene.image,
                                 viz.draw_overlay(scene.image, scene, names, class_colors)])
            write_rgb(out / f'{name}_preview.png', preview)
    if not args.quiet:
        print(f'wrote {args.count} scene(s) of {width}x{height} to {out}')
    return 0


def _add_synth(subparsers) -> None:
    parser = subparsers.add_parser(
        'synth', help='write synthetic scenes (shapes on textures) as PNG files',
        description=cmd_synth.__doc__)
    parser.add_argument('output', help='folder to write into (created if missing)')
    parser.add_argument('--count', type=int, default=16, help='number of scenes (default 16)')
    parser.add_argument('--size', type=parse_size, default=(640, 480),
                        help='WIDTHxHEIGHT of each scene (default 640x480)')
    parser.add_argument('--seed', type=int, default=0, help='generator seed (default 0)')
    parser.add_argument('--preview', action='store_true',
                        help='also write <name>_preview.png: image beside its panoptic overlay')
    parser.add_argument('--quiet', action='store_true', help='no progress bar or summary')
    parser.set_defaults(func=cmd_synth)


VERIFY_TOLERANCE = 1e-3  # max |ours - transformers| logit difference, relative to max(1, |logit|)


def _verify_against_transformers(model, folder: Path) -> str:
    """Compare ``model`` with transformers' ``EomtForUniversalSegmentation`` loaded from
    ``folder`` (``attn_mask_probs`` zeroed: EoMT runs unmasked after annealing) on one random
    image; returns the summary, ``ValueError`` above :data:`VERIFY_TOLERANCE`."""
    import torch

    try:
        import transformers
    except ImportError:
        raise ValueError('--verify needs transformers (pip install transformers)') from None
    hf = transformers.EomtForUniversalSegmentation.from_pretrained(
        str(folder), use_safetensors=True).eval()
    config = model.config
    mean = torch.tensor(config.pixel_mean).view(1, 3, 1, 1)
    std = torch.tensor(config.pixel_std).view(1, 3, 1, 1)
    images = torch.rand(1, 3, *config.img_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hf.attn_mask_probs.zero_()
        expected = hf(pixel_values=(images - mean) / std)  # HF's processor normalises
        actual = model.eval()(images)
    diffs = {}
    for name, ours, theirs in (('class', actual.class_logits, expected.class_queries_logits),
                               ('mask', actual.mask_logits, expected.masks_queries_logits)):
        if ours.shape != theirs.shape:
            raise ValueError(f'{name} logits have shape {tuple(ours.shape)}, transformers '
                             f'gives {tuple(theirs.shape)}')
        scale = max(1.0, theirs.abs().max().item())
        diffs[name] = ((ours - theirs).abs().max().item(), scale)
    summary = ', '.join(f'{name} logits {diff:.3g}' for name, (diff, _) in diffs.items())
    bad = [name for name, (diff, scale) in diffs.items() if diff > VERIFY_TOLERANCE * scale]
    if bad:
        raise ValueError(f'imported model differs from transformers (max abs difference: '
                         f'{summary}; tolerance {VERIFY_TOLERANCE:g} x max(1, |logit|))')
    return f'max abs difference vs transformers: {summary}'


AUTO_LABEL_SET = 'auto'  # as tokenmask_ros.model.label_sets (kept torch-free for --help)
PUBLISHED_LABEL_SETS = ('coco_panoptic', 'ade20k_panoptic', 'cityscapes')


def cmd_import_eomt(args: argparse.Namespace) -> int:
    """Convert a Hugging Face EoMT model (a folder with config.json + model.safetensors, or
    a hub id owner/name[@revision], from the local HF cache or downloaded) to a checkpoint."""
    from tokenmask_ros.model import save_checkpoint
    from tokenmask_ros.model.eomt_import import EomtImportError, import_hf_eomt
    from tokenmask_ros.model.hub import parse_hub_id, snapshot_folder

    source = args.source
    try:
        hub_id = parse_hub_id(source)
        folder = snapshot_folder(*hub_id) if hub_id else Path(source)
        name = f'{hub_id[0]}@{folder.name}' if hub_id else Path(source).resolve().name
        model = import_hf_eomt(folder, label_set=args.label_set)
        verified = _verify_against_transformers(model, folder) if args.verify else ''
        path = save_checkpoint(model, args.output, extra_metadata={'imported_from': name})
    except (EomtImportError, OSError, ValueError) as error:  # HubError is an OSError
        return _error('import-eomt', error, 1)
    if verified:
        print(verified)
    if not args.quiet:
        config = model.config
        print(f'imported {source} ({config.backbone}, width {config.embed_dim}, depth '
              f'{config.depth}, {config.num_classes} classes, {config.num_queries} queries) '
              f'to {path}')
    return 0


def _add_import_eomt(subparsers) -> None:
    parser = subparsers.add_parser(
        'import-eomt', help='convert a Hugging Face transformers EoMT model to a checkpoint',
        description=cmd_import_eomt.__doc__)
    parser.add_argument('source', metavar='SOURCE',
                        help='folder saved by EomtForUniversalSegmentation (config.json and '
                        'model.safetensors), or a hub id owner/name[@revision]: taken from the '
                        'Hugging Face cache ($HF_HUB_CACHE), downloaded only if missing there '
                        'and HF_HUB_OFFLINE is not set')
    parser.add_argument('-o', '--output', required=True, metavar='OUT',
                        help='checkpoint to write (.safetensors; replaced if it exists)')
    parser.add_argument('--label-set', metavar='NAME|FILE.json', default=AUTO_LABEL_SET,
                        help='thing/stuff flags and colours of the classes: auto (a published '
                        "set recognised from the checkpoint's class names), a published set ("
                        f'{", ".join(PUBLISHED_LABEL_SETS)}), things (every class a thing) or '
                        'a JSON list of {name, isthing, color} (default: auto)')
    parser.add_argument('--verify', action='store_true',
                        help='compare class and mask logits with transformers on a random image '
                        f'and fail above {VERIFY_TOLERANCE:g} (needs transformers)')
    parser.add_argument('--quiet', action='store_true', help='no summary line')
    parser.set_defaults(func=cmd_import_eomt)


def _error(command: str, message, code: int) -> int:
    """One line on stderr, the exit status back."""
    text = ' '.join(str(message).split())
    print(f'tokenmask {command}: error: {text}', file=sys.stderr)
    return code


def _find_model(text: str | None, what: str = 'model file') -> Path:
    """The model file a --model value names (see ``resolve_model_path``: the bundled model
    by default or by its bare file name); FileNotFoundError with a one-line message."""
    path = resolve_model_path(text)
    if not path.is_file():
        raise FileNotFoundError(not_found_message(what, path))
    return path


MODEL_HELP = ('TokenMask checkpoint (.safetensors) or exported .onnx file; a bare bundled file '
              f'name ({", ".join(BUNDLED_MODELS)}) finds the bundled copy')


def _model_options(parser: argparse.ArgumentParser) -> None:
    """--model, --device, --cache-dir: what predict and bench load, where, with which cache."""
    parser.add_argument('--model', metavar='PATH',
                        help=f'{MODEL_HELP} (default: the bundled model, {BUNDLED_MODELS[0]})')
    parser.add_argument('--device', default='auto',
                        help="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:N' or, "
                        "for --backend openvino, Intel 'GPU' / 'NPU' (default auto)")
    parser.add_argument('--cache-dir', metavar='DIR',
                        help='where ONNX exports and TensorRT engines are cached '
                        '(default: the runtime\'s cache folder)')
    parser.add_argument('--threads', type=int, default=0, metavar='N',
                        help='CPU threads per inference for onnxruntime, openvino and torch '
                        "(default 0: each runtime's own default; on small or shared CPUs "
                        'fewer can be faster)')


def _threshold_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--score-threshold', type=float, default=SCORE_THRESHOLD,
                        help='minimum class probability of a kept query '
                        f'(default {SCORE_THRESHOLD})')
    parser.add_argument('--overlap-threshold', type=float, default=OVERLAP_THRESHOLD,
                        help='minimum fraction of its mask a query must keep after the '
                        f'per-pixel argmax (default {OVERLAP_THRESHOLD})')
    parser.add_argument('--label-divisor', type=int, default=LABEL_DIVISOR,
                        help='panoptic id = class * divisor + instance '
                        f'(default {LABEL_DIVISOR})')


# --------------------------------------------------------------------------- predict


def _predict_inputs(paths: list[str]) -> list[tuple[Path, str, int]]:
    """``(path, 'image' | 'video', input number)`` for every input, folders expanded to
    their images in natural-sorted order (the input number groups them, for --track).

    SourceError (missing input, folder without images, nothing given) before any model is
    loaded; whether each file is readable is found out per file (see :func:`_precheck`).
    """
    from tokenmask_ros.sources import IMAGE_SUFFIXES, FolderSource, SourceError

    items = []
    for group, text in enumerate(paths):
        path = Path(text).expanduser()
        if path.is_dir():
            items += [(p, 'image', group) for p in FolderSource(path, loop=False).paths]
        elif not path.exists():
            raise SourceError(f'input not found: {path}')
        else:
            kind = 'image' if path.suffix.lower() in IMAGE_SUFFIXES else 'video'
            items.append((path, kind, group))
    if not items:
        raise SourceError('no input images or videos given')
    return items


def _precheck(path: Path, kind: str, max_pixels: int) -> str | None:
    """Why an input cannot be used, from its header only (no pixels decoded); None if it
    looks usable. Lets a run whose only input is bad fail before the model loads."""
    import cv2

    from tokenmask_ros.sources import CaptureSource, SourceError

    if kind == 'image':
        if cv2.haveImageReader(str(path)):  # reads the signature only
            return None
        return f'cannot read image {path} (not an image OpenCV can decode)'
    try:
        CaptureSource(str(path), max_pixels=max_pixels).close()
    except SourceError as error:
        return _limit_hint(str(error))
    return None


def _limit_hint(message: str) -> str:
    """Point a size refusal at the option that lifts it."""
    return f'{message} (raise --max-pixels to allow it)' if 'more than' in message else message


def _video_frame_count(path: Path) -> int:
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        return max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
    finally:
        capture.release()


def _input_frames(path: Path, kind: str, max_pixels: int, unique):
    """``(name, RGB frame, images[] fields)`` for one image or every frame of one video.

    Names: the image's stem, ``<video stem>_<frame:06d>`` for video frames, made unique by
    ``unique``. SourceError (one line, naming the file) when the input cannot be read or is
    larger than ``max_pixels``; an image's size is checked from its header before decoding.
    """
    import cv2

    from tokenmask_ros.image_io import read_image_file
    from tokenmask_ros.sources import CaptureSource, SourceError

    if kind == 'image':
        try:
            bgr = read_image_file(path, max_pixels)
        except (ValueError, OSError) as error:
            raise SourceError(_limit_hint(f'cannot read image {error}')) from None
        yield unique(path.stem), cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), {
            'file_name': path.name, 'source': str(path)}
        return
    try:
        with CaptureSource(str(path), max_pixels=max_pixels) as video:
            for frame in video:
                name = unique(f'{path.stem}_{frame.index:06d}')
                yield name, cv2.cvtColor(frame.pixels, cv2.COLOR_BGR2RGB), {
                    'file_name': f'{name}.png', 'source': str(path), 'frame': frame.index}
    except SourceError as error:
        raise SourceError(_limit_hint(str(error))) from None


def _unique_names():
    """A function that returns each name once, then ``name_2``, ``name_3``..."""
    used: dict[str, int] = {}

    def unique(name: str) -> str:
        count = used.get(name, 0) + 1
        used[name] = count
        return name if count == 1 else unique(f'{name}_{count}')

    return unique


class _Skipped:
    """Inputs a run leaves out: one warning line each when there are several inputs (a
    lone input's problem is the run's error instead)."""

    def __init__(self, total: int):
        self.total = total
        self.reasons: list[str] = []

    def add(self, reason: str, write=None) -> None:
        self.reasons.append(reason)
        if self.total > 1:
            line = f'tokenmask predict: warning: skipped: {reason}'
            (write or (lambda text: print(text, file=sys.stderr)))(line)

    def __len__(self) -> int:
        return len(self.reasons)

    def message(self) -> str:
        if self.total == 1 and self.reasons:
            return self.reasons[0]
        return f'{len(self.reasons)} of {self.total} inputs skipped (see the warnings above)'


def cmd_predict(args: argparse.Namespace) -> int:
    """Segment images, image folders and videos; write COCO-panoptic results and overlays.

    Writes into --output-dir: panoptic/<frame>.png (segment id = R + 256 G + 256^2 B, ids
    1..N per frame, 0 = void), predictions.json (COCO-panoptic images / annotations /
    categories; category id = the model's class index, segments keep their panoptic id as
    panoptic_id), and overlay/<frame>.jpg unless --no-overlay. An unreadable input, or one
    larger than --max-pixels (checked from its header before decoding), is skipped with a
    warning; the others are still written. With --track, thing ids (panoptic_id, overlay
    labels "class #N") are track numbers, stable over each input's frames.
    """
    from tokenmask_ros.sources import SourceError

    if args.max_pixels < 1:
        return _error('predict', f'--max-pixels must be >= 1, got {args.max_pixels}', 2)
    if args.track_max_age < 0 or not 0.0 <= args.track_min_iou <= 1.0:
        return _error('predict', '--track-max-age must be >= 0 and --track-min-iou in 0..1', 2)
    try:  # checked before torch is even imported
        items = _predict_inputs(args.inputs)
        model = _find_model(args.model)
    except (SourceError, FileNotFoundError) as error:
        return _error('predict', error, 2)
    skipped = _Skipped(len(items))
    usable = []
    for path, kind, group in items:
        reason = _precheck(path, kind, args.max_pixels)
        if reason:
            skipped.add(reason)
        else:
            usable.append((path, kind, group))
    if not usable:
        return _error('predict', skipped.message(), 2)

    from tokenmask_ros.model import CheckpointError
    from tokenmask_ros.runtime import BackendUnavailable, Segmenter

    try:
        segmenter = Segmenter(model, args.backend, args.device, args.precision,
                              score_threshold=args.score_threshold,
                              overlap_threshold=args.overlap_threshold,
                              label_divisor=args.label_divisor, cache_dir=args.cache_dir,
                              max_pixels=args.max_pixels, threads=args.threads)
    except (FileNotFoundError, CheckpointError, ValueError) as error:
        return _error('predict', error, 2)
    except (BackendUnavailable, ImportError) as error:
        return _error('predict', error, 1)
    backend = segmenter.backend.describe()
    try:
        timings, json_path, writer = _segment_inputs(segmenter, usable, skipped, model, args)
    except SourceError as error:
        return _error('predict', error, 2)
    except OSError as error:
        return _error('predict', error, 1)
    finally:
        segmenter.close()
    if not args.quiet:
        _print_predict_summary(timings, backend, json_path, writer, args)
    return _error('predict', skipped.message(), 1) if skipped else 0


def _segment_inputs(segmenter, items, skipped: _Skipped, model: Path, args):
    """Segment every frame of ``items``; skip (and record) inputs that fail to read.

    Returns the per-frame timings, the written predictions.json and the PanopticWriter.
    SourceError when no frame at all was segmented.
    """
    from tqdm import tqdm

    from tokenmask_ros import viz
    from tokenmask_ros.coco_panoptic_io import PanopticWriter, categories_json
    from tokenmask_ros.image_io import write_rgb
    from tokenmask_ros.runtime import InputError
    from tokenmask_ros.sources import SourceError

    backend = segmenter.backend.describe()
    config = segmenter.config
    names = segmenter.class_names or [f'class_{i}' for i in range(config.num_classes)]
    colors = viz.class_colors(config.classes, config.num_classes)
    out = Path(args.output_dir)
    writer = PanopticWriter(out, categories_json(names, segmenter.is_thing, colors),
                            label_divisor=args.label_divisor)
    total = sum(1 if kind == 'image' else _video_frame_count(path) for path, kind, _ in items)
    unique = _unique_names()
    track = _Tracks(segmenter.is_thing, args) if args.track else None
    label_text = viz.track_label_text(args.label_divisor) if args.track else None
    timings = []
    with tqdm(total=total or None, desc='predict', unit='frame',
              disable=args.quiet) as progress:
        for path, kind, group in items:
            try:
                for name, rgb, fields in _input_frames(path, kind, args.max_pixels, unique):
                    prediction = segmenter(rgb)
                    timings.append(segmenter.last_timing)
                    if track:
                        prediction = track(group, prediction, rgb)
                    writer.add(prediction, name, len(timings) - 1, **fields)
                    if not args.no_overlay:
                        blended = viz.draw_overlay(rgb, prediction, names, colors,
                                                   label_text=label_text)
                        write_rgb(out / 'overlay' / f'{name}.jpg', blended)
                    progress.update()
            except (SourceError, InputError) as error:
                reason = str(error) if isinstance(error, SourceError) else f'{path}: {error}'
                skipped.add(reason, lambda text: progress.write(text, file=sys.stderr))
                if kind == 'image':
                    progress.update()
    if not timings:
        raise SourceError(skipped.message() if skipped
                          else 'the inputs hold no frames (empty videos?)')
    info = {'description': 'tokenmask predict', 'model': str(model),
            'backend': backend, 'label_divisor': args.label_divisor,
            'score_threshold': args.score_threshold,
            'overlap_threshold': args.overlap_threshold, 'max_pixels': args.max_pixels,
            'tracking': bool(args.track)}
    if args.track:
        info.update(track_max_age=args.track_max_age, track_min_iou=args.track_min_iou)
    json_path = writer.write_json(out / 'predictions.json', info=info)
    return timings, json_path, writer


class _Tracks:
    """One PanopticTracker per input (a video, a folder's sorted frames, an image), so
    thing ids are track numbers that persist over that input's frames. A frame of another
    size than the one before it (folders may mix sizes) starts the tracks afresh."""

    def __init__(self, is_thing, args):
        from tokenmask_ros.tracking import PanopticTracker

        self._new = lambda: PanopticTracker(is_thing, label_divisor=args.label_divisor,
                                            max_age=args.track_max_age,
                                            min_iou=args.track_min_iou)
        self._trackers: dict[int, tuple] = {}

    def __call__(self, group: int, prediction, rgb):
        tracker, shape = self._trackers.get(group, (None, None))
        if tracker is None:
            tracker = self._new()
        elif shape != rgb.shape:
            tracker.reset()
        self._trackers[group] = (tracker, rgb.shape)
        return tracker.update(prediction, rgb)


def _print_predict_summary(timings, backend: str, json_path: Path, writer, args) -> None:
    import numpy as np

    mean = {stage: float(np.mean([getattr(t, stage) for t in timings]))
            for stage in ('preprocess', 'inference', 'postprocess')}
    print(f'segmented {len(timings)} frame(s) with {backend}: '
          f'{sum(mean.values()):.1f} ms/frame (preprocess {mean["preprocess"]:.1f}, '
          f'inference {mean["inference"]:.1f}, postprocess {mean["postprocess"]:.1f})')
    written = [str(json_path), str(writer.panoptic_dir)]
    if not args.no_overlay:
        written.append(str(Path(args.output_dir) / 'overlay'))
    print(f'wrote {", ".join(written)}')


def _add_predict(subparsers) -> None:
    parser = subparsers.add_parser(
        'predict', help='segment images, folders and videos into COCO-panoptic files',
        description=inspect.cleandoc(cmd_predict.__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='exit status: 0 done; 1 some inputs skipped (one warning line each, then\n'
        '"N of M inputs skipped"), backend unavailable or output not writable; 2 bad\n'
        'arguments, no usable input or a bad model file (one line on stderr)')
    parser.add_argument('inputs', nargs='+', metavar='INPUT',
                        help='image files, folders of images, video files')
    parser.add_argument('-o', '--output-dir', required=True, metavar='DIR',
                        help='folder to write into (created if missing)')
    _model_options(parser)
    parser.add_argument('--backend', default='auto', choices=('auto', *BACKENDS),
                        help='inference backend (default auto: the fastest that works here)')
    parser.add_argument('--precision', default='auto', choices=PRECISIONS,
                        help='auto: fp16 on CUDA, fp32 on CPU; int8: a calibrated export '
                        '(onnxruntime, openvino; default calibration: synthetic scenes) '
                        '(default auto)')
    _threshold_options(parser)
    parser.add_argument('--max-pixels', type=int, default=MAX_IMAGE_PIXELS, metavar='N',
                        help='skip images and videos with more than N pixels (width * height),'
                        ' checked from the file header before decoding '
                        f'(default {MAX_IMAGE_PIXELS})')
    parser.add_argument('--no-overlay', action='store_true',
                        help='do not write overlay/<frame>.jpg colour overlays')
    parser.add_argument('--track', action='store_true',
                        help='number things by track, not per frame: one tracker per input '
                        "(a video's frames, a folder's natural-sorted images), so a thing "
                        'keeps its panoptic_id (and its "class #N" overlay label) from frame '
                        'to frame')
    parser.add_argument('--track-max-age', type=int, default=TRACK_MAX_AGE, metavar='N',
                        help='with --track: frames a thing may go unseen and keep its id '
                        f'(default {TRACK_MAX_AGE})')
    parser.add_argument('--track-min-iou', type=float, default=TRACK_MIN_IOU, metavar='IOU',
                        help='with --track: least mask IoU to continue a track '
                        f'(default {TRACK_MIN_IOU})')
    parser.add_argument('--quiet', action='store_true', help='no progress bar or summary')
    parser.set_defaults(func=cmd_predict)


# --------------------------------------------------------------------------- bench


def cmd_bench(args: argparse.Namespace) -> int:
    """Latency (median / p90 / p99, split into preprocess / inference / postprocess), FPS and
    peak memory of the whole Segmenter call per backend x precision x frame size.

    Frames are synthetic scenes of each --size. Combinations that cannot run here are
    listed as skipped with the reason. Writes bench.md, bench.csv and bench.png (stacked
    stage bars) into --output-dir and prints the table.

    --all instead times every backend and precision side by side in one run (torch fp32,
    onnxruntime fp32 / int8, openvino fp32 / int8, tensorrt fp32 / fp16), alternating
    calls on the same frames, one run per --size, and reports median / p90, the ratio to
    onnxruntime fp32 and the fraction of pixels whose panoptic id equals onnxruntime fp32's:
    bench_all.md, bench_all.csv, bench_all.png. --reference GRAPH.onnx adds that exported
    graph on onnxruntime fp32 as the first row and the reference of both columns, e.g. the
    graph before query selection (tokenmask export --selection all) or an earlier export.
    """
    if args.repeats < 1 or args.warmup < 0 or args.threads < 0:
        return _error('bench', '--repeats must be >= 1, --warmup and --threads >= 0', 2)
    try:
        model = _find_model(args.model)
    except FileNotFoundError as error:
        return _error('bench', error, 2)
    if args.reference is not None and not args.all:
        return _error('bench', '--reference only applies to --all', 2)
    if args.all:
        return _bench_all(args, model)

    import logging

    from tqdm import tqdm

    from tokenmask_ros.runtime import bench
    from tokenmask_ros.runtime.segmenter import model_config

    try:
        model_config(model)
    except (ValueError, OSError) as error:
        return _error('bench', error, 2)
    logging.getLogger('tokenmask_ros.runtime').setLevel(logging.WARNING)
    total = len(args.backends) * len(args.precisions) * len(args.size)
    with tqdm(total=total, desc='bench', unit='combination', disable=args.quiet) as progress:
        def update(result: bench.BenchResult) -> None:
            progress.set_postfix_str(f'{result.backend} {result.precision} '
                                     f'{result.width}x{result.height}: {result.status}')
            progress.update()

        results = bench.run_grid(model, args.backends, args.precisions, args.size,
                                 progress=update, device=args.device, warmup=args.warmup,
                                 repeats=args.repeats, cache_dir=args.cache_dir,
                                 score_threshold=args.score_threshold, threads=args.threads)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = bench.markdown_table(results)
    command = shlex.join(['tokenmask', *args.argv])
    note = ('Latency: wall clock of the whole Segmenter call per frame (median / p90 / p99 '
            f'over {args.repeats} runs after {args.warmup} warm-up runs, cycling through '
            f'{bench.NUM_FRAMES} synthetic scenes); the stage columns are medians of '
            'Segmenter.last_timing. FPS = 1000 / mean latency. Peak memory: see the '
            'mem method (rss_hwm: peak resident set minus the resident set before the '
            'backend was built; cuda_max_allocated: torch.cuda.max_memory_allocated).')
    (out / 'bench.md').write_text(f'# tokenmask bench\n\n`{command.strip()}`\n\n'
                                  f'{bench.environment(args.device)}\n\n{note}\n\n{table}\n')
    bench.write_csv(out / 'bench.csv', results)
    bench.plot_stages(out / 'bench.png', results, title=model.name)
    if not args.quiet:
        print(table)
        print(f'\nwrote {out / "bench.md"}, {out / "bench.csv"}, {out / "bench.png"}')
    return 1 if all(r.status == 'error' for r in results) else 0


def _bench_all(args: argparse.Namespace, model: Path) -> int:
    """``tokenmask bench --all``: :func:`~tokenmask_ros.runtime.bench.bench_side_by_side`."""
    import logging

    from tokenmask_ros.runtime import bench
    from tokenmask_ros.runtime.segmenter import model_config

    try:
        model_config(model)
        if args.reference is not None:
            if Path(args.reference).suffix != '.onnx':
                raise ValueError(f'--reference {args.reference}: not an exported .onnx graph')
            model_config(args.reference)
    except (ValueError, OSError) as error:
        return _error('bench', error, 2)
    logging.getLogger('tokenmask_ros.runtime').setLevel(logging.WARNING)
    say = (lambda text: None) if args.quiet else (lambda text: print(text, file=sys.stderr))
    out = Path(args.output_dir)
    rows, sections, plots = [], [], []
    for size in args.size:  # one side-by-side run per frame size
        try:
            size_rows = bench.bench_side_by_side(
                model, size, device=args.device, warmup=args.warmup, repeats=args.repeats,
                cache_dir=args.cache_dir, score_threshold=args.score_threshold, progress=say,
                reference_graph=args.reference, threads=args.threads)
        except ValueError as error:  # a bad --device
            return _error('bench', error, 2)
        rows += size_rows
        label = f'{size[0]}x{size[1]}'
        table = bench.side_by_side_table(size_rows)
        sections.append(f'## {label} frames\n\n{table}\n')
        if not args.quiet:
            print(f'{label} frames:\n{table}\n')
        out.mkdir(parents=True, exist_ok=True)
        plot = out / ('bench_all.png' if len(args.size) == 1 else f'bench_all_{label}.png')
        plots.append(bench.plot_side_by_side(plot, size_rows, title=f'{model.name}, {label}'))
    command = shlex.join(['tokenmask', *args.argv])
    note = (f'Frames: {bench.NUM_FRAMES} synthetic scenes of each size. Latency: '
            'wall clock of the whole Segmenter call, median / p90 over '
            f'{args.repeats} calls per combination after {args.warmup} warm-up calls; each '
            'round calls every combination once, in an order rotated every round, so load '
            'from other processes spreads evenly. Pixels: share of pixels whose panoptic id '
            'equals the reference\'s (first row) on the same frames.'
            + ('' if args.reference is None else
               f' Reference: the exported graph {Path(args.reference).name} on onnxruntime '
               'fp32.'))
    (out / 'bench_all.md').write_text(f'# tokenmask bench --all\n\n`{command.strip()}`\n\n'
                                      f'{bench.environment(args.device)}\n\n{note}\n\n'
                                      + '\n'.join(sections))
    bench.write_side_by_side_csv(out / 'bench_all.csv', rows)
    if not args.quiet:
        print(f'wrote {out / "bench_all.md"}, {out / "bench_all.csv"}, '
              + ', '.join(str(p) for p in plots))
    return 0 if any(r.ok for r in rows) else 1


def _add_bench(subparsers) -> None:
    parser = subparsers.add_parser(
        'bench', help='latency, FPS and memory of the Segmenter per backend x precision x size',
        description=inspect.cleandoc(cmd_bench.__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _model_options(parser)
    parser.add_argument('--backends', nargs='+', default=list(BACKENDS), choices=BACKENDS,
                        metavar='NAME', help=f'from {", ".join(BACKENDS)} (default: all)')
    parser.add_argument('--precisions', nargs='+', default=['auto'], choices=PRECISIONS,
                        metavar='P', help='fp32, fp16, int8 or auto (fp16 on CUDA, fp32 on '
                        'CPU; default auto)')
    parser.add_argument('--size', nargs='+', type=parse_size, default=[(640, 480)],
                        metavar='WxH', help='frame sizes (default 640x480)')
    parser.add_argument('--warmup', type=int, default=3, help='untimed runs first (default 3)')
    parser.add_argument('--repeats', type=int, default=20, help='timed runs (default 20)')
    parser.add_argument('--score-threshold', type=float, default=SCORE_THRESHOLD,
                        help=f'score threshold of the Segmenter (default {SCORE_THRESHOLD})')
    parser.add_argument('-o', '--output-dir', default='benchmark_results', metavar='DIR',
                        help='folder for bench.md, bench.csv and bench.png '
                        '(default benchmark_results, beside training/benchmark.py\'s costs.*)')
    parser.add_argument('--all', action='store_true',
                        help='every backend and precision side by side on the same frames '
                        '(ignores --backends / --precisions): latency, ratio to onnxruntime '
                        'fp32 and pixels equal to it')
    parser.add_argument('--reference', metavar='GRAPH.onnx',
                        help='with --all: an exported graph timed on onnxruntime fp32 as the '
                        'first row and the reference of the ratios (e.g. tokenmask export '
                        '--selection all: the graph before query selection)')
    parser.add_argument('--quiet', action='store_true', help='no progress bar or table')
    parser.set_defaults(func=cmd_bench)


def cmd_export(args: argparse.Namespace) -> int:
    """Export a checkpoint to ONNX: uint8 image in, compact panoptic tensors out.

    The graph has a fixed input size (the checkpoint's, or --size WxH: the position
    embedding is resampled), normalisation and the dense decoding inside, and the model
    config in its metadata; --fp16 writes a strongly typed FP16 graph with FP32 islands.
    --int8 writes a calibrated INT8 (QDQ) graph for onnxruntime and openvino: the layers with
    weights in int8, attention softmax, LayerNorm and the decoding in float; calibrated on
    --calibration DIR (images like the robot's camera sees, letterboxed as at run time) or
    --synthetic N synthetic scenes (only for models trained on them). The graph decodes
    only the frame's kept queries (--selection kept, for onnxruntime / openvino); TensorRT
    needs static shapes: --selection fixed (the default with --fp16). --selection all
    decodes every query, as the graph did before query selection: slower, same output
    while the cap does not bind, for comparisons (tokenmask bench --all --reference).
    """
    try:
        checkpoint = _find_model(args.checkpoint, 'checkpoint')
    except FileNotFoundError as error:
        return _error('export', error, 2)
    if args.size is not None and any(s % 16 for s in args.size):
        return _error('export', f'--size {args.size[0]}x{args.size[1]}: width and height '
                      'must be multiples of 16 (the patch size), e.g. 640x480', 2)
    img_size = None if args.size is None else (args.size[1], args.size[0])  # (H, W)
    calibration = args.calibration if args.synthetic is None else f'synthetic:{args.synthetic}'
    if args.int8 and calibration is None:
        return _error('export', '--int8 needs --calibration DIR (images like the '
                      "robot's) or --synthetic N (synthetic scenes)", 2)
    if not args.int8 and calibration is not None:
        return _error('export', '--calibration and --synthetic only apply to --int8', 2)
    if args.int8 and args.fp16:
        return _error('export', '--int8 and --fp16 exclude each other: int8 is quantized '
                      'from the fp32 graph', 2)
    selection = args.selection or ('fixed' if args.fp16 else 'kept')
    # 'all' is every query decoded: no cap, and static shapes like 'fixed'.
    decoded, selection = (None, 'fixed') if selection == 'all' else (DECODED_QUERIES, selection)
    from tokenmask_ros.model import CheckpointError, build_model, load_checkpoint
    from tokenmask_ros.model.backbone import fit_position_embedding
    from tokenmask_ros.runtime.errors import BackendUnavailable
    from tokenmask_ros.runtime.export import ExportError, export_onnx

    try:
        model = load_checkpoint(checkpoint)
        if img_size is not None and img_size != tuple(model.config.img_size):
            config = model.config.replace(img_size=img_size)
            state = fit_position_embedding(model.state_dict(), model.config, config, crop=False)
            model = build_model(config)
            model.load_state_dict(state)
        if args.int8:
            path = _export_int8(model.eval(), Path(args.output), args.opset, calibration,
                                selection, decoded)
        else:
            path = export_onnx(model.eval(), args.output, fp16=args.fp16, opset=args.opset,
                               selection=selection, decoded_queries=decoded)
    except (CheckpointError, ExportError, ValueError, OSError, BackendUnavailable) as error:
        return _error('export', error, 1)
    height, width = model.config.img_size
    precision = 'int8' if args.int8 else 'fp16' if args.fp16 else 'fp32'
    print(f'exported {checkpoint.name} ({precision}, input {width}x'
          f'{height}, opset {args.opset}) to {path} ({path.stat().st_size / 2**20:.1f} MB)')
    return 0


def _export_int8(model, output: Path, opset: int, calibration: str, selection: str,
                 decoded_queries: int | None) -> Path:
    """The fp32 export of ``model`` beside ``output`` (a temp file), quantized into
    ``output``; the calibration source is checked before the export."""
    import tempfile

    from tokenmask_ros.runtime.export import export_onnx
    from tokenmask_ros.runtime.quantize import calibration_key, quantize_int8

    calibration_key(calibration)  # CalibrationError (a ValueError) for a bad source
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix='.tokenmask-export-') as tmp:
        fp32 = export_onnx(model, Path(tmp) / 'fp32.onnx', opset=opset, selection=selection,
                           decoded_queries=decoded_queries)
        return quantize_int8(fp32, output, calibration)


def _add_export(subparsers) -> None:
    parser = subparsers.add_parser('export', help='export a checkpoint to ONNX',
                                   description=cmd_export.__doc__)
    parser.add_argument('checkpoint', metavar='CKPT',
                        help='TokenMask checkpoint (.safetensors); a bare bundled file name '
                        'finds the bundled copy')
    parser.add_argument('-o', '--output', required=True, metavar='OUT',
                        help='ONNX file to write (replaced atomically if it exists)')
    parser.add_argument('--fp16', action='store_true',
                        help='strongly typed FP16 graph (for TensorRT / GPUs)')
    parser.add_argument('--int8', action='store_true',
                        help='calibrated INT8 (QDQ) graph for onnxruntime / openvino on CPUs; '
                        'needs --calibration or --synthetic')
    calibration = parser.add_mutually_exclusive_group()
    calibration.add_argument('--calibration', metavar='DIR',
                             help='with --int8: folder of calibration images (a few hundred '
                             "frames like the robot's camera sees)")
    calibration.add_argument('--synthetic', type=int, metavar='N',
                             help='with --int8: calibrate on N synthetic scenes (for models '
                             'trained on them, such as the bundled one)')
    parser.add_argument('--size', type=parse_size, metavar='WxH',
                        help='network input WIDTHxHEIGHT, multiples of 16, e.g. 640x480 '
                        "(default: the checkpoint's)")
    parser.add_argument('--selection', choices=(*SELECTIONS, 'all'),
                        help="queries the graph decodes: 'kept' (only the frame's kept ones, "
                        "onnxruntime / openvino), 'fixed' (the best "
                        f"{DECODED_QUERIES}, static shapes for TensorRT) or 'all' (every "
                        'query, as before query selection: for comparisons); default kept, '
                        'fixed with --fp16')
    parser.add_argument('--opset', type=int, default=18, choices=(18, 19, 20),
                        help='ONNX opset (default 18; TensorRT parses 18-20)')
    parser.set_defaults(func=cmd_export)


def cmd_build_engine(args: argparse.Namespace) -> int:
    """Build (or find in the cache) the TensorRT engine for a model on this GPU.

    Engines only run on the TensorRT version and GPU that built them, so this is done on the
    target (e.g. the Jetson) once; the node and the other commands then load it from the
    cache in seconds.
    """
    from tokenmask_ros.runtime.backends import BackendUnavailable, create_backend

    try:
        model = _find_model(args.model)
    except FileNotFoundError as error:
        return _error('build-engine', error, 2)
    try:
        backend = create_backend('tensorrt', model, device=args.device,
                                 precision=args.precision, cache_dir=args.cache_dir,
                                 force_engine_update=args.force)
    except BackendUnavailable as error:
        return _error('build-engine', error, 1)
    try:
        state = 'built' if backend.built_engine else 'found in the cache'
        print(f'{backend.describe()}: engine {state}: {backend.engine_path}')
    finally:
        backend.close()
    return 0


def _add_build_engine(subparsers) -> None:
    parser = subparsers.add_parser('build-engine', help='build and cache the TensorRT engine',
                                   description=cmd_build_engine.__doc__)
    parser.add_argument('model', metavar='MODEL', help=MODEL_HELP)
    parser.add_argument('--device', default='cuda', help="CUDA device (default 'cuda')")
    parser.add_argument('--precision', default='auto', choices=PRECISIONS,
                        help='auto = fp16 on CUDA (default auto)')
    parser.add_argument('--cache-dir', metavar='DIR',
                        help="cache folder (default: the runtime's cache folder)")
    parser.add_argument('--force', action='store_true',
                        help='rebuild even when a valid cached engine exists')
    parser.set_defaults(func=cmd_build_engine)


COMMANDS = (_add_synth, _add_import_eomt, _add_predict, _add_bench, _add_export,
            _add_build_engine)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='tokenmask', description='TokenMask panoptic segmentation tools for ROS 2.')
    parser.add_argument('--version', action='version', version=f'%(prog)s {__version__}')
    subparsers = parser.add_subparsers(title='commands', dest='command', required=True)
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for reports (bench.md)
    if getattr(args, 'count', 1) < 0:
        print('tokenmask: --count must be >= 0', file=sys.stderr)
        return 2
    return args.func(args)


if __name__ == '__main__':
    sys.exit(main())
