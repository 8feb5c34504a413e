"""Write a state dict in fastMRI's VarNet layout (random weights) to exercise `prune --arch e2e-varnet`."""

import sys

import torch

from mbdlprune.models import create_arch

out = sys.argv[1] if len(sys.argv) > 1 else "varnet_state_dict.pt"
model = create_arch("e2e-varnet", num_cascades=4, chans=18, pools=4, sens_chans=8, sens_pools=4)
torch.save(model.state_dict(), out)
print(f"wrote {out} ({sum(p.numel() for p in model.parameters())} parameters)")
