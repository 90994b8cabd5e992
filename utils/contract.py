"""Constants of the SNU challenge's data contract shared by ``data/`` and ``models/`` (both may import
``utils/``; ``models/`` never imports ``data/``), so each lives under one name.

``IMAGE_SIZE``: the side of every challenge image in pixels: labels, ``image_input``/``image_grappa`` and
reconstructions are float32 ``(slices, IMAGE_SIZE, IMAGE_SIZE)``; the reconstruction models' output and
the training targets are cropped (or zero-padded) to it.
"""
IMAGE_SIZE = 384
