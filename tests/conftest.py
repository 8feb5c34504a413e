"""Test session settings: tiny tensors run fastest, and most predictably, on one thread."""

import torch

torch.set_num_threads(1)
