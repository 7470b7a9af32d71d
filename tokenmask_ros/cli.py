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
from tokenmask_ros.bundled import not_found_message
from tokenmask_ros.defaults import (  # torch-free: building the parser stays fast
    BACKENDS,
    LABEL_DIVISOR,
    OVERLAP_THRESHOLD,
    PRECISIONS,
    SCORE_THRESHOLD,
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


def cmd_import_eomt(args: argparse.Namespace) -> int:
    """Convert a Hugging Face EoMT folder (config.json + model.safetensors) to a checkpoint."""
    from tokenmask_ros.model import save_checkpoint
    from tokenmask_ros.model.eomt_import import EomtImportError, import_hf_eomt

    try:
        model = import_hf_eomt(args.folder)
        path = save_checkpoint(model, args.output,
                               extra_metadata={'imported_from': Path(args.folder).resolve().name})
    except (EomtImportError, OSError) as error:
        print(f'tokenmask import-eomt: error: {error}', file=sys.stderr)
        return 1
    if not args.quiet:
        config = model.config
        print(f'imported {args.folder} ({config.backbone}, width {config.embed_dim}, depth '
              f'{config.depth}, {config.num_classes} classes, {config.num_queries} queries) '
              f'to {path}')
    return 0


def _add_import_eomt(subparsers) -> None:
    parser = subparsers.add_parser(
        'import-eomt', help='convert a Hugging Face transformers EoMT model to a checkpoint',
        description=cmd_import_eomt.__doc__)
    parser.add_argument('folder', metavar='DIR',
                        help='folder saved by EomtForUniversalSegmentation '
                        '(config.json and model.safetensors)')
    parser.add_argument('-o', '--output', required=True, metavar='OUT',
                        help='checkpoint to write (.safetensors; replaced if it exists)')
    parser.add_argument('--quiet', action='store_true', help='no summary line')
    parser.set_defaults(func=cmd_import_eomt)


def _error(command: str, message, code: int) -> int:
    """One line on stderr, the exit status back."""
    text = ' '.join(str(message).split())
    print(f'tokenmask {command}: error: {text}', file=sys.stderr)
    return code


def _model_options(parser: argparse.ArgumentParser) -> None:
    """--model, --device, --cache-dir: what predict and bench load, where, with which cache."""
    parser.add_argument('--model', required=True, metavar='PATH',
                        help='TokenMask checkpoint (.safetensors) or exported .onnx file')
    parser.add_argument('--device', default='auto',
                        help="'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N' "
                        '(default auto)')
    parser.add_argument('--cache-dir', metavar='DIR',
                        help='where ONNX exports and TensorRT engines are cached '
                        '(default: the runtime\'s cache folder)')


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


def _predict_inputs(paths: list[str]) -> list[tuple[Path, str]]:
    """``(path, 'image' | 'video')`` for every input, folders expanded to their images.

    SourceError (missing input, folder without images, a file whose header no OpenCV
    decoder knows, video OpenCV cannot open) before any model is loaded.
    """
    import cv2

    from tokenmask_ros.sources import IMAGE_SUFFIXES, CaptureSource, FolderSource, SourceError

    items = []
    for text in paths:
        path = Path(text).expanduser()
        if path.is_dir():
            items += [(p, 'image') for p in FolderSource(path, loop=False).paths]
        elif not path.exists():
            raise SourceError(f'input not found: {path}')
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            items.append((path, 'image'))
        else:
            CaptureSource(str(path)).close()  # fails now, not after the images before it
            items.append((path, 'video'))
    for path, kind in items:
        if kind == 'image' and not cv2.haveImageReader(str(path)):  # reads the header only
            raise SourceError(f'cannot read image {path} (not an image OpenCV can decode)')
    if not items:
        raise SourceError('no input images or videos given')
    return items


def _video_frame_count(path: Path) -> int:
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        return max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
    finally:
        capture.release()


def _predict_frames(items: list[tuple[Path, str]]):
    """``(name, RGB frame, images[] fields)`` for every image and every video frame.

    Names: the image's stem, ``<video stem>_<frame:06d>`` for video frames, made unique
    with ``_2``, ``_3``... when two inputs share a stem. SourceError for an unreadable image.
    """
    import cv2

    from tokenmask_ros.sources import CaptureSource, SourceError

    used: dict[str, int] = {}

    def unique(name: str) -> str:
        count = used.get(name, 0) + 1
        used[name] = count
        return name if count == 1 else unique(f'{name}_{count}')

    for path, kind in items:
        if kind == 'image':
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise SourceError(f'cannot read image {path} (not an image OpenCV can decode)')
            yield unique(path.stem), cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), {
                'file_name': path.name, 'source': str(path)}
            continue
        with CaptureSource(str(path)) as video:
            for frame in video:
                name = unique(f'{path.stem}_{frame.index:06d}')
                yield name, cv2.cvtColor(frame.pixels, cv2.COLOR_BGR2RGB), {
                    'file_name': f'{name}.png', 'source': str(path), 'frame': frame.index}


def cmd_predict(args: argparse.Namespace) -> int:
    """Segment images, image folders and videos; write COCO-panoptic results and overlays.

    Writes into --output-dir: panoptic/<frame>.png (segment id = R + 256 G + 256^2 B, ids
    1..N per frame, 0 = void), predictions.json (COCO-panoptic images / annotations /
    categories; category id = the model's class index, segments keep their panoptic id as
    panoptic_id), and overlay/<frame>.jpg unless --no-overlay.
    """
    from tokenmask_ros.sources import SourceError

    try:  # checked before torch is even imported
        items = _predict_inputs(args.inputs)
    except SourceError as error:
        return _error('predict', error, 2)
    if not Path(args.model).is_file():
        return _error('predict', not_found_message('model file', args.model), 2)

    import numpy as np
    from tqdm import tqdm

    from tokenmask_ros import viz
    from tokenmask_ros.coco_panoptic_io import PanopticWriter, categories_json
    from tokenmask_ros.image_io import write_rgb
    from tokenmask_ros.model import CheckpointError
    from tokenmask_ros.runtime import BackendUnavailable, InputError, Segmenter

    try:
        segmenter = Segmenter(args.model, args.backend, args.device, args.precision,
                              score_threshold=args.score_threshold,
                              overlap_threshold=args.overlap_threshold,
                              label_divisor=args.label_divisor, cache_dir=args.cache_dir)
    except (FileNotFoundError, CheckpointError, ValueError) as error:
        return _error('predict', error, 2)
    except (BackendUnavailable, ImportError) as error:
        return _error('predict', error, 1)

    backend = segmenter.backend.describe()
    config = segmenter.config
    names = segmenter.class_names or [f'class_{i}' for i in range(config.num_classes)]
    colors = viz.class_colors(config.classes, config.num_classes)
    out = Path(args.output_dir)
    writer = PanopticWriter(out, categories_json(names, segmenter.is_thing, colors),
                            label_divisor=args.label_divisor)
    total = sum(1 if kind == 'image' else _video_frame_count(path) for path, kind in items)
    timings = []
    try:
        with tqdm(total=total or None, desc='predict', unit='frame',
                  disable=args.quiet) as progress:
            for image_id, (name, rgb, fields) in enumerate(_predict_frames(items)):
                try:
                    prediction = segmenter(rgb)
                except InputError as error:
                    raise SourceError(f'{fields["source"]}: {error}') from None
                timings.append(segmenter.last_timing)
                writer.add(prediction, name, image_id, **fields)
                if not args.no_overlay:
                    blended = viz.draw_overlay(rgb, prediction, names, colors)
                    write_rgb(out / 'overlay' / f'{name}.jpg', blended)
                progress.update()
        if not timings:
            raise SourceError('the inputs hold no frames (empty videos?)')
        info = {'description': 'tokenmask predict', 'model': str(args.model),
                'backend': backend, 'label_divisor': args.label_divisor,
                'score_threshold': args.score_threshold,
                'overlap_threshold': args.overlap_threshold}
        json_path = writer.write_json(out / 'predictions.json', info=info)
    except SourceError as error:
        return _error('predict', error, 2)
    except OSError as error:
        return _error('predict', error, 1)
    finally:
        segmenter.close()
    if not args.quiet:
        mean = {stage: float(np.mean([getattr(t, stage) for t in timings]))
                for stage in ('preprocess', 'inference', 'postprocess')}
        print(f'segmented {len(timings)} frame(s) with {backend}: '
              f'{sum(mean.values()):.1f} ms/frame (preprocess {mean["preprocess"]:.1f}, '
              f'inference {mean["inference"]:.1f}, postprocess {mean["postprocess"]:.1f})')
        written = [str(json_path), str(writer.panoptic_dir)]
        if not args.no_overlay:
            written.append(str(out / 'overlay'))
        print(f'wrote {", ".join(written)}')
    return 0


def _add_predict(subparsers) -> None:
    parser = subparsers.add_parser(
        'predict', help='segment images, folders and videos into COCO-panoptic files',
        description=inspect.cleandoc(cmd_predict.__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='exit status: 0 done, 2 bad input or model file (one line on stderr), '
        '1 backend unavailable or output not writable')
    parser.add_argument('inputs', nargs='+', metavar='INPUT',
                        help='image files, folders of images, video files')
    parser.add_argument('-o', '--output-dir', required=True, metavar='DIR',
                        help='folder to write into (created if missing)')
    _model_options(parser)
    parser.add_argument('--backend', default='auto', choices=('auto', *BACKENDS),
                        help='inference backend (default auto: the fastest that works here)')
    parser.add_argument('--precision', default='auto', choices=PRECISIONS,
                        help='auto: fp16 on CUDA, fp32 on CPU (default auto)')
    _threshold_options(parser)
    parser.add_argument('--no-overlay', action='store_true',
                        help='do not write overlay/<frame>.jpg colour overlays')
    parser.add_argument('--quiet', action='store_true', help='no progress bar or summary')
    parser.set_defaults(func=cmd_predict)


# --------------------------------------------------------------------------- bench


def cmd_bench(args: argparse.Namespace) -> int:
    """Latency (median / p90 / p99, split into preprocess / inference / postprocess), FPS and
    peak memory of the whole Segmenter call per backend x precision x frame size.

    Frames are synthetic scenes of each --size. Combinations that cannot run here are
    listed as skipped with the reason. Writes bench.md, bench.csv and bench.png (stacked
    stage bars) into --output-dir and prints the table.
    """
    if args.repeats < 1 or args.warmup < 0:
        return _error('bench', '--repeats must be >= 1 and --warmup >= 0', 2)
    model = Path(args.model)
    if not model.is_file():
        return _error('bench', not_found_message('model file', model), 2)

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
                                 score_threshold=args.score_threshold)
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


def _add_bench(subparsers) -> None:
    parser = subparsers.add_parser(
        'bench', help='latency, FPS and memory of the Segmenter per backend x precision x size',
        description=inspect.cleandoc(cmd_bench.__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _model_options(parser)
    parser.add_argument('--backends', nargs='+', default=list(BACKENDS), choices=BACKENDS,
                        metavar='NAME', help=f'from {", ".join(BACKENDS)} (default: all)')
    parser.add_argument('--precisions', nargs='+', default=['auto'], choices=PRECISIONS,
                        metavar='P', help='fp32, fp16 or auto (fp16 on CUDA, fp32 on CPU; '
                        'default auto)')
    parser.add_argument('--size', nargs='+', type=parse_size, default=[(640, 480)],
                        metavar='WxH', help='frame sizes (default 640x480)')
    parser.add_argument('--warmup', type=int, default=3, help='untimed runs first (default 3)')
    parser.add_argument('--repeats', type=int, default=20, help='timed runs (default 20)')
    parser.add_argument('--score-threshold', type=float, default=SCORE_THRESHOLD,
                        help=f'score threshold of the Segmenter (default {SCORE_THRESHOLD})')
    parser.add_argument('-o', '--output-dir', default='benchmark_results', metavar='DIR',
                        help='folder for bench.md, bench.csv and bench.png '
                        '(default benchmark_results, beside training/benchmark.py\'s costs.*)')
    parser.add_argument('--quiet', action='store_true', help='no progress bar or table')
    parser.set_defaults(func=cmd_bench)


def cmd_export(args: argparse.Namespace) -> int:
    """Export a checkpoint to ONNX: uint8 image in, compact panoptic tensors out.

    The graph has a fixed input size (the checkpoint's, or --size H W: the position
    embedding is resampled), normalisation and the dense decoding inside, and the model
    config in its metadata; --fp16 writes a strongly typed FP16 graph with FP32 islands.
    """
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        return _error('export', not_found_message('checkpoint', checkpoint), 2)
    if args.size is not None and (min(args.size) < 16 or any(s % 16 for s in args.size)):
        return _error('export', f'--size {args.size[0]} {args.size[1]}: height and width '
                      'must be positive multiples of 16 (the patch size)', 2)
    from tokenmask_ros.model import CheckpointError, build_model, load_checkpoint
    from tokenmask_ros.model.backbone import fit_position_embedding
    from tokenmask_ros.runtime.export import ExportError, export_onnx

    try:
        model = load_checkpoint(checkpoint)
        if args.size is not None and tuple(args.size) != tuple(model.config.img_size):
            config = model.config.replace(img_size=tuple(args.size))
            state = fit_position_embedding(model.state_dict(), model.config, config, crop=False)
            model = build_model(config)
            model.load_state_dict(state)
        path = export_onnx(model.eval(), args.output, fp16=args.fp16, opset=args.opset)
    except (CheckpointError, ExportError, ValueError, OSError) as error:
        return _error('export', error, 1)
    height, width = model.config.img_size
    print(f'exported {checkpoint.name} ({"fp16" if args.fp16 else "fp32"}, input {width}x'
          f'{height}, opset {args.opset}) to {path} ({path.stat().st_size / 2**20:.1f} MB)')
    return 0


def _add_export(subparsers) -> None:
    parser = subparsers.add_parser('export', help='export a checkpoint to ONNX',
                                   description=cmd_export.__doc__)
    parser.add_argument('checkpoint', metavar='CKPT', help='TokenMask checkpoint (.safetensors)')
    parser.add_argument('-o', '--output', required=True, metavar='OUT',
                        help='ONNX file to write (replaced atomically if it exists)')
    parser.add_argument('--fp16', action='store_true',
                        help='strongly typed FP16 graph (for TensorRT / GPUs)')
    parser.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'),
                        help="network input height and width (default: the checkpoint's)")
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

    if not Path(args.model).is_file():
        return _error('build-engine', not_found_message('model file', args.model), 2)
    try:
        backend = create_backend('tensorrt', args.model, device=args.device,
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
    parser.add_argument('model', metavar='MODEL',
                        help='TokenMask checkpoint (.safetensors) or exported .onnx file')
    parser.add_argument('--device', default='cuda', help="CUDA device (default 'cuda')")
    parser.add_argument('--precision', default='auto', choices=('auto', 'fp32', 'fp16'),
                        help='auto = fp16 on CUDA')
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
