"""Speed-ups beside the lesson path, each checked against it (PyTorch's habit of a plain "math"
path next to every fast kernel).

- ``switch``: the one switch the trainer turns (``TrainConfig.speedups``), and the only module the
  trainer imports from here;
- ``kernels``: 3×3 convolutions on maps of 4×4 and below as one matrix product (CPU);
- ``fold``: the adaptive pool folded into the first Linear, and its compact 4096×512 update on
  1×1 maps;
- ``features``: frozen feature maps computed once instead of every epoch;
- ``allocator``: glibc's malloc tuned so that a step's big buffers are reused (process-wide, set
  when the server or the CLI starts; imports nothing heavy, so it can run before torch loads).

This package's ``__init__`` imports nothing, so ``python -m vgg.speedups.allocator`` stays light.
"""
