"""Torch-free constants of the training scripts, so their ``--help`` stays fast."""

SEMANTIC_MODES = ('padded', 'sliding')  # evaluate.py --semantic-mode
INSTANCE_TOP_K = 100  # EoMT / Mask2Former: top-100 (query, class) pairs per image
# Mask AP is on by default: it adds about 6 % of CPU time to a synthetic evaluation
# (top-k decoding, RLE encoding, COCOeval), far less than --semantic-mode sliding.
INSTANCE_DEFAULT = True
IMAGE_FORMATS = ('png', 'jpg')  # image files make_synthetic.py can write
