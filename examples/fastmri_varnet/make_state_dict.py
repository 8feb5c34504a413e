"""Write a state dict in fastMRI's VarNet layout (random weights) to exercise `prune --arch e2e-varnet`.

With the fastMRI package installed (`pip install --no-deps fastmri==0.3.0` plus pandas, pyyaml,
requests, tqdm) the file comes from `fastmri.models.VarNet` itself; otherwise from mbdlprune's
`e2e-varnet`, whose state-dict keys are the same.
"""

import sys

import torch

ARGS = {"num_cascades": 4, "chans": 18, "pools": 4, "sens_chans": 8, "sens_pools": 4}

out = sys.argv[1] if len(sys.argv) > 1 else "varnet_state_dict.pt"
try:
    from fastmri.models import VarNet
except ImportError:
    from mbdlprune.models import create_arch

    model, source = create_arch("e2e-varnet", **ARGS), "mbdlprune e2e-varnet"
else:
    model, source = VarNet(**ARGS), "fastmri.models.VarNet"
torch.save(model.state_dict(), out)  # as fastMRI saves its weights
print(f"wrote {out} from {source} ({sum(p.numel() for p in model.parameters())} parameters)")
