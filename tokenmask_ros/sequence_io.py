"""Synthetic sequences on disk, in formats that outside tools read.

One folder per sequence::

    images/000000.png      RGB frame
    depth/000000.png       16-bit depth in millimetres (registered to the image)
    panoptic/000000.png    COCO-panoptic PNG: id = R + 256 G + 256^2 B = panoptic id + 1000
                           (category id = class id + 1, as training/datasets/synthetic.py)
    panoptic.json          COCO-panoptic JSON of those PNGs; things carry "track_id"
    camera_info.json       fx, fy, cx, cy, width, height (pixels; depth_scale metres per unit)
    seqinfo.ini            MOTSChallenge-style name, length, size, frame rate
    gt.txt                 KITTI MOTS: "frame object_id class_id height width rle" per thing
                           per frame; frames from 0, object_id = class_id * 1000 + track id,
                           class_id = the synthetic class id, rle = pycocotools' compressed
                           counts. Written last: its presence marks a complete sequence.

TrackEval's KITTI MOTS reader takes these with ``GT_LOC_FORMAT='{gt_folder}/{seq}/gt.txt'``
and the seqmap that ``training/make_synthetic.py --sequences`` writes beside the folders.
"""

from __future__ import annotations

import configparser
import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from tokenmask_ros.atomic_file import atomic_path
from tokenmask_ros.camera import PinholeCamera
from tokenmask_ros.coco_panoptic_io import categories_json, rgb2id, write_png
from tokenmask_ros.defaults import LABEL_DIVISOR, MAX_IMAGE_PIXELS
from tokenmask_ros.image_io import read_image_file, write_bgr, write_rgb
from tokenmask_ros.synthetic import SYNTHETIC_CLASSES, Segment
from tokenmask_ros.synthetic_depth import thing_centres
from tokenmask_ros.synthetic_video import SequenceFrame, SequenceGenerator

DEPTH_SCALE = 0.001  # metres per unit of the 16-bit depth PNGs
FRAME_RATE = 10      # Hz, as image_source publishes by default


def frame_name(index: int) -> str:
    return f'{index:06d}.png'


def depth_to_png(depth_m: np.ndarray) -> np.ndarray:
    """Metres -> uint16 millimetres (0 = invalid: NaN, <= 0, or beyond 65.535 m)."""
    mm = np.round(np.nan_to_num(depth_m, nan=0.0, posinf=0.0) / DEPTH_SCALE)
    mm[(mm <= 0) | (mm > 65535)] = 0
    return mm.astype(np.uint16)


def mots_lines(frame: SequenceFrame, frame_number: int) -> list[str]:
    """The KITTI MOTS lines of one frame's things, in track-id order."""
    height, width = frame.panoptic.shape
    lines = []
    for panoptic_id, track_id in sorted(frame.track_ids.items(), key=lambda item: item[1]):
        class_id = panoptic_id // LABEL_DIVISOR
        mask = np.asfortranarray((frame.panoptic == panoptic_id).astype(np.uint8))
        counts = mask_utils.encode(mask)['counts'].decode('ascii')
        lines.append(f'{frame_number} {class_id * LABEL_DIVISOR + track_id} {class_id} '
                     f'{height} {width} {counts}')
    return lines


def write_sequence(folder: str | Path, generator: SequenceGenerator,
                   progress: Callable[[Iterable], Iterable] | None = None) -> Path:
    """Write every frame of ``generator`` under ``folder``; returns the gt.txt path."""
    folder = Path(folder)
    camera = generator.camera
    images, annotations, lines = [], [], []
    indices = range(len(generator))
    for index in (indices if progress is None else progress(indices)):
        frame = generator.frame(index)
        name = frame_name(index)
        write_rgb(folder / 'images' / name, frame.image)
        write_bgr(folder / 'depth' / name, depth_to_png(frame.depth))
        write_png(folder / 'panoptic' / name, frame.panoptic + LABEL_DIVISOR)
        images.append({'id': index, 'file_name': name, 'width': camera.width,
                       'height': camera.height})
        info = []
        for s in frame.segments:
            entry = {'id': int(s.id + LABEL_DIVISOR), 'category_id': s.category_id + 1,
                     'iscrowd': 0, 'bbox': [int(v) for v in s.bbox], 'area': int(s.area)}
            if s.id in frame.track_ids:
                entry['track_id'] = int(frame.track_ids[s.id])
            info.append(entry)
        annotations.append({'image_id': index, 'file_name': name, 'segments_info': info})
        lines += mots_lines(frame, index)
    categories = categories_json([c.name for c in SYNTHETIC_CLASSES],
                                 [c.is_thing for c in SYNTHETIC_CLASSES],
                                 [c.color for c in SYNTHETIC_CLASSES],
                                 [c.id + 1 for c in SYNTHETIC_CLASSES])
    (folder / 'panoptic.json').write_text(json.dumps({
        'info': {'generator': 'tokenmask_ros.synthetic_video.SequenceGenerator',
                 'seed': generator.seed, 'num_things': generator.num_things,
                 'label_divisor': LABEL_DIVISOR},
        'images': images, 'annotations': annotations, 'categories': categories}))
    (folder / 'camera_info.json').write_text(json.dumps({
        'fx': camera.fx, 'fy': camera.fy, 'cx': camera.cx, 'cy': camera.cy,
        'width': camera.width, 'height': camera.height, 'depth_scale': DEPTH_SCALE}, indent=1))
    ini = configparser.ConfigParser()
    ini.optionxform = str  # keep MOTSChallenge's camelCase keys
    ini['Sequence'] = {'name': folder.name, 'imDir': 'images', 'frameRate': str(FRAME_RATE),
                       'seqLength': str(len(generator)), 'imWidth': str(camera.width),
                       'imHeight': str(camera.height), 'imExt': '.png'}
    with open(folder / 'seqinfo.ini', 'w') as handle:
        ini.write(handle, space_around_delimiters=False)
    gt = folder / 'gt.txt'
    with atomic_path(gt) as temp:
        Path(temp).write_text(''.join(line + '\n' for line in lines))
    return gt


def read_camera(path: str | Path) -> PinholeCamera:
    """The camera of a ``camera_info.json``; ValueError naming the file when unusable."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        values = [float(data[k]) for k in ('fx', 'fy', 'cx', 'cy')]
        width, height = int(data['width']), int(data['height'])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f'{path}: needs numbers fx, fy, cx, cy, width, height ({error})') from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f'{path}: intrinsics must be finite')
    try:
        return PinholeCamera(*values, width, height)
    except ValueError as error:
        raise ValueError(f'{path}: {error}') from None


def read_mots(path: str | Path) -> dict[int, list[tuple[int, int, dict]]]:
    """``frame -> [(object_id, class_id, rle)]`` of a MOTS text file (one-line errors).

    Each line is ``frame object_id class_id height width rle``; malformed lines are refused
    with the file and line number. The one MOTS parser of the package (the tracking
    evaluation builds its frames on it).
    """
    path = Path(path)
    frames: dict[int, list[tuple[int, int, dict]]] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f'{path}:{number}'
        if len(fields) != 6:
            raise ValueError(f'{where}: expected "frame track_id class_id height width rle", '
                             f'got {len(fields)} fields')
        try:
            t, object_id, class_id, height, width = (int(v) for v in fields[:5])
        except ValueError:
            raise ValueError(f'{where}: frame, ids and size must be integers') from None
        if height <= 0 or width <= 0:
            raise ValueError(f'{where}: size must be positive, got {width}x{height}')
        rle = {'size': [height, width], 'counts': fields[5].encode('ascii')}
        frames.setdefault(t, []).append((object_id, class_id, rle))
    return frames


def _read_png(path: Path, flags: int) -> np.ndarray:
    return read_image_file(path, MAX_IMAGE_PIXELS, flags)


def read_sequence(folder: str | Path) -> list[SequenceFrame]:
    """The frames written by :func:`write_sequence` (depth quantised to millimetres).

    Track ids come from gt.txt: each MOTS mask must cover exactly one panoptic segment.
    """
    folder = Path(folder)
    camera = read_camera(folder / 'camera_info.json')
    data = json.loads((folder / 'panoptic.json').read_text())
    mots = read_mots(folder / 'gt.txt')
    scale = float(json.loads((folder / 'camera_info.json').read_text()).get('depth_scale',
                                                                             DEPTH_SCALE))
    frames = []
    for index, annotation in enumerate(data['annotations']):
        name = annotation['file_name']
        image = _read_png(folder / 'images' / name, cv2.IMREAD_COLOR)[..., ::-1]
        ids = rgb2id(_read_png(folder / 'panoptic' / name, cv2.IMREAD_COLOR)[..., ::-1])
        panoptic = (ids - LABEL_DIVISOR).astype(np.int32)
        raw = _read_png(folder / 'depth' / name, cv2.IMREAD_UNCHANGED)
        if raw.dtype != np.uint16 or raw.ndim != 2:
            raise ValueError(f'{folder / "depth" / name}: expected a 16-bit one-channel PNG')
        depth = raw.astype(np.float32) * np.float32(scale)
        segments = tuple(Segment(s['id'] - LABEL_DIVISOR, s['category_id'] - 1,
                                 SYNTHETIC_CLASSES[s['category_id'] - 1].is_thing, s['area'],
                                 tuple(s['bbox'])) for s in annotation['segments_info'])
        track_ids = {}
        for object_id, _class_id, rle in mots.get(index, []):
            covered = np.unique(panoptic[mask_utils.decode(rle).astype(bool)])
            if len(covered) != 1:
                raise ValueError(f'{folder / "gt.txt"}: frame {index} object {object_id} covers '
                                 f'{len(covered)} panoptic segments, not 1')
            track_ids[int(covered[0])] = object_id % LABEL_DIVISOR
        centres = thing_centres(panoptic, depth, camera, track_ids)
        frames.append(SequenceFrame(np.ascontiguousarray(image), (panoptic // LABEL_DIVISOR)
                                    .astype(np.uint8), panoptic, segments, track_ids, depth,
                                    camera, index, centres))
    return frames
