"""Importing Hugging Face ``transformers`` EoMT folders reproduces HF's outputs exactly."""

import json
import logging
import shutil

import pytest
import torch
from conftest import installed_executable, run_command
from safetensors.torch import load_file, save_file

from tokenmask_ros import cli
from tokenmask_ros.model import TokenMaskConfig, load_checkpoint, save_checkpoint
from tokenmask_ros.model.eomt_import import EomtImportError, config_from_hf, import_hf_eomt
from tokenmask_ros.model.label_sets import published_classes
from tokenmask_ros.model.postprocess import thing_flags

transformers = pytest.importorskip('transformers')

SMALL = {'hidden_size': 64, 'num_hidden_layers': 4, 'num_attention_heads': 2, 'image_size': 64,
         'patch_size': 16, 'num_register_tokens': 2, 'num_blocks': 2, 'num_queries': 5,
         'id2label': {0: 'person', 1: 'car', 2: 'road'}}
VARIANTS = {
    'default': {},
    # timm expresses HF's SwiGLU through the giant DINOv2 builder's packed GluMlp.
    'swiglu-noreg-stride8': {'use_swiglu_ffn': True, 'num_register_tokens': 0,
                             'num_upscale_blocks': 1},
}
ATOL = 1e-4


def _save_hf_model(folder, attn_mask_probs=0.0, **changes):
    """A random small HF EoMT model, saved as a public checkpoint would be.

    Returned with ``attn_mask_probs`` zeroed (unmasked inference, as EoMT's after
    annealing), whatever value was saved.
    """
    torch.manual_seed(0)
    hf = transformers.EomtForUniversalSegmentation(
        transformers.EomtConfig(**{**SMALL, **changes})).eval()
    with torch.no_grad():
        # HF initialises norms to 1/0, LayerScale to 1 and registers to 0; noise on every
        # parameter keeps a swapped or skipped tensor from going unnoticed.
        for parameter in hf.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
        hf.attn_mask_probs.fill_(attn_mask_probs)
    hf.save_pretrained(folder)
    with torch.no_grad():
        hf.attn_mask_probs.zero_()
    return hf


@pytest.fixture(scope='module', params=sorted(VARIANTS))
def hf_model(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f'hf_eomt_{request.param}')
    return _save_hf_model(folder, **VARIANTS[request.param]), folder


@pytest.fixture(scope='module')
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp('hf_eomt')
    _save_hf_model(folder)
    return folder


def _assert_same_outputs(hf, ours):
    """HF gets the normalised image (its processor's job), ours the [0, 1] image."""
    processor = transformers.EomtImageProcessor()
    assert ours.config.pixel_mean == pytest.approx(processor.image_mean)
    assert ours.config.pixel_std == pytest.approx(processor.image_std)
    mean = torch.tensor(processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std).view(1, 3, 1, 1)
    images = torch.rand(2, 3, *ours.config.img_size, generator=torch.Generator().manual_seed(1))
    assert not hf.training and not ours.training
    with torch.no_grad():
        expected = hf(pixel_values=(images - mean) / std)
        actual = ours(images)
    # HF returns the last layer's predictions, masks at grid * 2**num_upscale_blocks.
    assert actual.class_logits.shape == expected.class_queries_logits.shape
    assert actual.mask_logits.shape == expected.masks_queries_logits.shape
    class_diff = (actual.class_logits - expected.class_queries_logits).abs().max().item()
    mask_diff = (actual.mask_logits - expected.masks_queries_logits).abs().max().item()
    print(f'max abs difference: class logits {class_diff:.3g}, mask logits {mask_diff:.3g}')
    assert class_diff <= ATOL and mask_diff <= ATOL


def test_import_reproduces_hf_outputs(hf_model):
    hf, folder = hf_model
    ours = import_hf_eomt(folder)
    config = ours.config
    assert config.head == 'eomt' and config.num_classes == 3 and config.num_queries == 5
    assert [c.name for c in config.classes] == ['person', 'car', 'road']
    assert config.output_stride == 16 // 2 ** hf.config.num_upscale_blocks
    assert TokenMaskConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    _assert_same_outputs(hf, ours)


def test_cli_import_writes_an_equivalent_checkpoint(hf_model, tmp_path):
    hf, folder = hf_model
    out = tmp_path / 'imported.safetensors'
    result = run_command([*installed_executable('tokenmask'), 'import-eomt', str(folder),
                          '-o', str(out)], timeout=120)
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout
    _assert_same_outputs(hf, load_checkpoint(out))


def _rewrite_weights(folder, change):
    path = folder / 'model.safetensors'
    state = load_file(str(path))
    change(state)
    save_file(state, str(path), metadata={'format': 'pt'})


@pytest.mark.parametrize('buffer', ['absent', 'zeros', 'ones'])
def test_any_saved_attn_mask_probs_imports_as_unmasked_eomt(buffer, tmp_path, caplog):
    """Conversions drop the buffer, or save_pretrained writes its initial ones."""
    folder = tmp_path / 'hf'
    hf = _save_hf_model(folder, attn_mask_probs=1.0 if buffer == 'ones' else 0.0)
    if buffer == 'absent':
        _rewrite_weights(folder, lambda s: s.pop('attn_mask_probs'))
    saved = load_file(str(folder / 'model.safetensors')).get('attn_mask_probs')
    assert (saved is None) == (buffer == 'absent')
    with caplog.at_level(logging.WARNING, logger='tokenmask_ros.model'):
        ours = import_hf_eomt(folder)
    warnings = [r.getMessage() for r in caplog.records if 'attn_mask_probs' in r.getMessage()]
    if buffer == 'ones':
        assert len(warnings) == 1 and 'runs unmasked' in warnings[0]
    else:
        assert not warnings
    _assert_same_outputs(hf, ours)
    if buffer == 'ones':  # the CLI imports it too (in-process; the subprocess runs above)
        out = tmp_path / 'imported.safetensors'
        assert cli.main(['import-eomt', str(folder), '-o', str(out), '--quiet']) == 0
        _assert_same_outputs(hf, load_checkpoint(out))


def _named_hf_folder(folder, names):
    config = transformers.EomtConfig(**{**SMALL, 'id2label': dict(enumerate(names))})
    transformers.EomtForUniversalSegmentation(config).save_pretrained(folder)
    return folder


def test_a_coco_named_checkpoint_gets_coco_stuff_flags_and_colours(tmp_path, caplog):
    coco = published_classes('coco_panoptic')
    folder = _named_hf_folder(tmp_path / 'coco', [c.name for c in coco])
    with caplog.at_level(logging.WARNING, logger='tokenmask_ros.model'):
        model = import_hf_eomt(folder)
    assert 'match no known label set' not in caplog.text  # (a fresh model saves ones)
    assert model.config.classes == coco
    # The flags and colours survive the checkpoint, which the node, overlays and
    # predictions.json read them from.
    path = save_checkpoint(model, tmp_path / 'coco.safetensors')
    classes = {c.name: c for c in load_checkpoint(path).config.classes}
    for stuff in ('sky-other-merged', 'road', 'wall-other-merged'):
        assert not classes[stuff].is_thing
    assert classes['person'].is_thing and classes['person'].color == (220, 20, 60)
    assert classes['road'].color == (128, 64, 128)
    assert thing_flags(load_checkpoint(path).config.classes).sum() == 80


@pytest.mark.parametrize('label_set', ['ade20k_panoptic', 'cityscapes'])
def test_ade20k_and_cityscapes_checkpoints_are_recognised(label_set, tmp_path):
    published = published_classes(label_set)
    names = [c.name.split(',')[0].replace(' ', '_') for c in published]  # a config's spelling
    model = import_hf_eomt(_named_hf_folder(tmp_path / label_set, names))
    assert [c.name for c in model.config.classes] == names
    assert [(c.is_thing, c.color) for c in model.config.classes] == [
        (c.is_thing, c.color) for c in published]


def test_label_set_choices_of_the_importer(tmp_path, caplog):
    folder = _named_hf_folder(tmp_path / 'hf', ['person', 'car', 'road'])
    with caplog.at_level(logging.WARNING, logger='tokenmask_ros.model'):
        model = import_hf_eomt(folder)  # unknown names: all things, with a warning
    assert [c.is_thing for c in model.config.classes] == [True, True, True]
    assert 'match no known label set' in caplog.text
    label_file = tmp_path / 'mine.json'
    label_file.write_text(json.dumps([{'name': 'person', 'isthing': True, 'color': [1, 2, 3]},
                                      {'name': 'car', 'isthing': True},
                                      {'name': 'road', 'isthing': False, 'color': [4, 5, 6]}]))
    model = import_hf_eomt(folder, label_set=str(label_file))
    assert [(c.is_thing, c.color) for c in model.config.classes] == [
        (True, (1, 2, 3)), (True, None), (False, (4, 5, 6))]
    with pytest.raises(EomtImportError, match='label set cityscapes has 19 classes but the '
                       'model has 3'):
        import_hf_eomt(folder, label_set='cityscapes')
    with pytest.raises(EomtImportError, match='not a readable JSON label set'):
        import_hf_eomt(folder, label_set=str(tmp_path / 'absent.json'))


def test_missing_and_unknown_weights_are_listed(hf_folder, tmp_path):
    missing = tmp_path / 'missing'
    shutil.copytree(hf_folder, missing)
    _rewrite_weights(missing, lambda s: (s.pop('layers.1.attention.k_proj.bias'),
                                         s.pop('upscale_block.block.0.conv2.weight')))
    with pytest.raises(EomtImportError, match='missing weights') as error:
        import_hf_eomt(missing)
    assert 'layers.1.attention.k_proj.bias' in str(error.value)
    assert 'upscale_block.block.0.conv2.weight' in str(error.value)

    unknown = tmp_path / 'unknown'
    shutil.copytree(hf_folder, unknown)
    _rewrite_weights(unknown, lambda s: s.update({'layers.9.norm1.weight': torch.ones(64)}))
    with pytest.raises(EomtImportError, match=r'no place in the model.*layers\.9\.norm1\.weight'):
        import_hf_eomt(unknown)


def test_weights_of_the_wrong_shape_are_listed(hf_folder, tmp_path):
    folder = tmp_path / 'shape'
    shutil.copytree(hf_folder, folder)
    _rewrite_weights(folder, lambda s: s.update({'query.weight': torch.zeros(7, 64)}))
    with pytest.raises(EomtImportError, match=r'wrong shapes: queries.weight \(7, 64\)'):
        import_hf_eomt(folder)


def test_bad_folders_fail_with_one_line_and_exit_code_1(hf_folder, tmp_path, capsys):
    no_config = tmp_path / 'no_config'
    shutil.copytree(hf_folder, no_config)
    (no_config / 'config.json').unlink()
    no_weights = tmp_path / 'no_weights'
    shutil.copytree(hf_folder, no_weights)
    (no_weights / 'model.safetensors').unlink()
    broken = tmp_path / 'broken'
    shutil.copytree(hf_folder, broken)
    (broken / 'model.safetensors').write_bytes(b'not safetensors')
    cases = {tmp_path / 'absent': 'is not a folder', no_config: 'has no config.json',
             no_weights: 'has no model.safetensors', broken: 'not a readable safetensors'}
    out = tmp_path / 'out.safetensors'
    for folder, message in cases.items():
        with pytest.raises(EomtImportError, match=message):
            import_hf_eomt(folder)
        # In-process for speed; the installed command runs once below.
        assert cli.main(['import-eomt', str(folder), '-o', str(out)]) == 1
        stderr = capsys.readouterr().err
        assert message in stderr and len(stderr.strip().splitlines()) == 1
        assert not out.exists()
    result = run_command([*installed_executable('tokenmask'), 'import-eomt',
                          str(tmp_path / 'absent'), '-o', str(out)], timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == (f'tokenmask import-eomt: error: {tmp_path / "absent"} '
                                     'is not a folder')
    assert not out.exists()


@pytest.mark.parametrize(('change', 'message'), [
    ({'image_size': 72}, 'does not divide image_size'),
    ({'hidden_act': 'gelu_new'}, 'hidden_act'),
    ({'layer_norm_eps': 1e-5}, 'layer_norm_eps'),
    ({'num_upscale_blocks': 5}, 'num_upscale_blocks'),
    ({'num_blocks': 9}, 'num_blocks 9 exceeds'),
    ({'hidden_size': '64'}, 'hidden_size must be an integer'),
    ({'model_type': 'mask2former'}, 'model_type'),
])
def test_unsupported_configs_are_refused(change, message):
    hf_config = {**transformers.EomtConfig(**SMALL).to_dict(), **change}
    with pytest.raises(EomtImportError, match=message):
        config_from_hf(hf_config)
